"""The benchmark scripts run, print their ratios and write their Markdown tables (smallest
settings; no timing asserted)."""

import re

import pytest

pytestmark = pytest.mark.mpi


def test_bench_run_two_ranks(run, tmp_path):
    table = tmp_path / "run.md"
    p = run(["scripts/bench_run.py", "--level", "3", "--steps", "5", "--goal", "60",
             "--write-table", str(table)], 2)  # fmt: skip
    assert p.returncode == 0, p.stderr
    text = table.read_text()
    assert "`.venv/bin/mpiexec -n 2 .venv/bin/python scripts/bench_run.py --level 3" in text
    assert "| mesh | icosphere level 3 (1,280 cells) |" in text, text
    assert "| ranks | 2 |" in text, text
    out = p.stdout
    assert "level 3 (1,280 cells), 2 rank(s), 5 steps" in out, out
    for pattern in (r"ratio [\d,]+x", r"ratio \d+\.\dx", r"= \d+\.\d\d x the goal of 60 s"):
        assert re.search(pattern, out), (pattern, out)
    assert "velocity fast" in out


def test_bench_run_rejects_bad_options(run):
    p = run(["scripts/bench_run.py", "--steps", "0"], 1)
    assert p.returncode == 2 and "--steps must be >= 1" in p.stderr


def test_bench_velocity_one_level(run, tmp_path):
    table = tmp_path / "velocity.md"
    args = ["--levels", "3", "--ranks", "1", "2", "--evals", "2", "--write-table", str(table)]
    p = run(["scripts/bench_velocity.py", *args], 1)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    for method in ("direct", "dense", "fast"):
        assert re.search(rf"^\s*3\s+642\s+1280\s+2\s+{method}\b", out, re.M), (method, out)
    m = re.search(r"rank independence \(fast\), level 3: max relative difference .* = (\S+)", out)
    assert m and float(m.group(1)) <= 1e-12, out
    # the Markdown table: the command that made it, date and machine, one row per rank count
    text = table.read_text()
    assert f"`.venv/bin/python scripts/bench_velocity.py {' '.join(args)}`" in text, text
    assert re.search(r"on \d{4}-\d\d-\d\d \d\d:\d\d UTC", text) and "Machine: " in text, text
    rows = [ln for ln in text.splitlines() if ln.startswith("| 3 | 642 / 1,280 |")]
    assert [r.split(" | ")[2] for r in rows] == ["1", "2"], text
    assert "estimated" not in rows[0] + rows[1]  # level 3: the direct sum is measured


def test_bench_dg_s2_nonlocal_quick(run):
    """The S^2 nonlocal DG0-vs-DG1 comparison runs on 2 ranks; DG1 on 3,840 dofs is more
    accurate than DG0 on 5,120 (second order against first: 4.7e-3 against 4.3e-2)."""
    p = run(["scripts/bench_dg.py", "--quick", "--cases", "s2-nonlocal"], 2, timeout=900)
    assert p.returncode == 0, p.stderr
    rows = {}
    for line in p.stdout.splitlines():
        f = line.split()
        if len(f) in (12, 13) and f[0] in ("DG0", "DG1"):  # the first row has no rate
            rows[(f[0], int(f[1]))] = dict(l1=float(f[6]), mass=float(f[-2]), low=float(f[-1]))
    assert set(rows) == {("DG0", 3), ("DG0", 4), ("DG1", 2), ("DG1", 3)}, p.stdout
    assert rows[("DG1", 3)]["l1"] < rows[("DG0", 4)]["l1"] / 4
    assert all(r["mass"] <= 1e-12 and r["low"] >= 0 for r in rows.values())
    assert "reference: DG1 level 5" in p.stdout


def test_bench_particles_tiny(run, tmp_path):
    """Direct and fast per-evaluation times on S^2 and S^1, the crossover line, a short real
    fast run and its scaled estimate, and the Markdown table (tiny sizes)."""
    table = tmp_path / "particles.md"
    args = ["--sizes", "60", "120", "--evals", "2", "--direct-evals", "1", "--run-T", "0.2",
            "--T", "1", "--write-table", str(table)]  # fmt: skip
    p = run(["scripts/bench_particles.py", *args], 1)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    for sphere in ("S^2", "S^1"):
        for n in (60, 120):
            m = re.search(rf"^{re.escape(sphere)} \| {n} \| \S+ \(1\) \| \S+ \(\S+x\) \| "
                          r"\S+ \(2\) \| (\S+)x \| \d+ \(\d+\) \| (\S+) \| (\S+) \|", out,
                          re.M)  # fmt: skip
            assert m, (sphere, n, out)
            assert float(m.group(3)) <= 1e-10  # measured error of the fast path (tol 1e-10)
        assert re.search(rf"^{re.escape(sphere)}: the fast path is", out, re.M), out
        assert re.search(rf"^{re.escape(sphere)}, n = 120: simulate_particles\(velocity='fast'\)"
                         r" to T = 0.2 \(dt = 0.1, 2 steps\) measured .* \(estimated\); "
                         r"8 of 8 evaluations fast", out, re.M), out  # fmt: skip
    text = table.read_text()
    assert f"`.venv/bin/python scripts/bench_particles.py {' '.join(args)}`" in text, text
    assert re.search(r"on \d{4}-\d\d-\d\d \d\d:\d\d UTC", text) and "Machine: " in text, text
    assert len([ln for ln in text.splitlines() if ln.startswith("| S^")]) == 4, text


def test_bench_particles_rejects_bad_options(run):
    p = run(["scripts/bench_particles.py", "--dims", "4"], 1)
    assert p.returncode == 2 and "--dims 2 and/or 3" in p.stderr
    p = run(["scripts/bench_particles.py", "--scale", "--scale-n", "10"], 1)
    assert p.returncode == 2 and "--scale-n must be >= 600" in p.stderr


def test_bench_particles_scale_tiny(run, tmp_path):
    """``--scale`` on 600 particles (A = 2 I, to T = 16, where they collapse into clusters
    late in the run): the run's row with both kinds of evaluations, the estimated baseline and
    its ratio, the three probes, the accuracy line at T / 2 (within the tolerance), the
    table with its command."""
    table = tmp_path / "scale.md"
    args = ["--scale", "--scale-n", "600", "--scale-T", "16", "--beta", "2", "--probe-steps",
            "2", "--samples", "20", "--write-table", str(table)]  # fmt: skip
    p = run(["scripts/bench_particles.py", *args], 1)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    m = re.search(r"^run to T = 16 \| 160 \| \S+ \| \S+ \| \S+ \| (\d+) expansion \+ (\d+) "
                  r"cluster \| -$", out, re.M)  # fmt: skip
    assert m and int(m.group(1)) + int(m.group(2)) == 640 and int(m.group(2)) > 0, out
    assert re.search(r"^baseline to T = 16 \(estimated\) \| 160 \| .* \| \S+x$", out, re.M), out
    for probe in ("uniform start, clusters=True", "collapsed (t = 8), clusters=False (baseline)",
                  "collapsed (t = 8), clusters=True"):  # fmt: skip
        assert re.search(rf"^{re.escape(probe)} \| 2 \| ", out, re.M), out
    m = re.search(r"^expansion at t = 8: max error on 20 sampled particles \S+ = (\S+) of the "
                  r"tolerance's scale", out, re.M)  # fmt: skip
    assert m and float(m.group(1)) <= 1.0, out
    text = table.read_text()
    assert f"`.venv/bin/python scripts/bench_particles.py {' '.join(args)}`" in text, text
    assert len([ln for ln in text.splitlines() if ln.startswith("| ")]) == 1 + 5, text
