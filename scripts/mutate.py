"""Mutation audit: apply realistic mistakes to the numerics and safety code, run the tests
that should catch each one, print caught / survived.

Each mutation is one text replacement ``(file, old, new)`` that must match exactly once
(a mutation whose ``old`` text no longer occurs is reported as ``stale`` and counts as a
failure of the audit, so the list follows the code), plus the pytest node ids or ``-k``
expressions that guard that property. A mutation is *caught* when those tests fail.

By default the audit works on a private copy of the last commit (``git archive HEAD`` into
a temporary directory): the shared working tree is never touched, other developers' runs
are not disturbed, half-done edits in the tree do not enter the score, and a crash or
Ctrl-C leaves nothing mutated. ``--worktree`` copies the working tree instead (HEAD, plus
``git diff HEAD`` and the untracked files git does not ignore), to try tests before
committing them. ``--in-place`` mutates the working tree itself (restoring each file in a
``finally`` block, also on Ctrl-C and SIGTERM); use it only on files nobody else edits.

Usage::

    python scripts/mutate.py                 # all mutations, on a private copy of HEAD
    python scripts/mutate.py --worktree -k w2   # with the uncommitted tests too
    python scripts/mutate.py --list          # names only
    python scripts/mutate.py -k lora -k w2   # mutations whose name contains any of these

Exit status: 0 when every mutation selected was caught, 1 otherwise, 2 on bad arguments.
The list and the last score are in docs/testing.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]  # pytest arguments: node ids, or "-k" expressions after a file


FV = "tests/test_fast_velocity.py"
W2 = "tests/test_wasserstein.py"
CL = "tests/test_clusters.py"
ST = "tests/test_stability.py"
GM = "tests/test_geometry_model.py"
DG = "tests/test_dg.py"
CVT = "tests/test_cluster_velocity.py"
CV_SRC = "solver/velocity/_cluster.py"
ADG = "solver/transport/_active_dg.py"
ADGT = ("tests/test_active_set.py", "-k", "moving_cells")

# fmt: off
MUTATIONS: list[Mutation] = [
    # ---- fast velocity: the a-posteriori bound and what it decides
    Mutation("fast: sign of the bound's denominator correction", "solver/velocity/_fast.py",
             "den = D[None, :] - eta * mass", "den = D[None, :] + eta * mass",
             (FV, "-k", "formula or infinite or half")),
    Mutation("fast: acceptance at tol instead of tol/2", "solver/velocity/_fast.py",
             "return X, D, q, scale, 0.5 * self.tol * scale",
             "return X, D, q, scale, 1.0 * self.tol * scale",
             (FV, "-k", "half")),
    Mutation("fast: a non-positive denominator accepted", "solver/velocity/_fast.py",
             "return np.where(den > 0, B, np.inf)", "return B",
             (FV, "-k", "infinite")),
    Mutation("fast: failing targets not recomputed directly", "solver/velocity/_fast.py",
             "X[fail] = attention_velocity(self.x[fail], self.y, w, A, V)", "pass",
             (FV, "-k", "half or concentrated")),
    Mutation("fast: degree weight b_l off by a factor (both back-ends)",
             "solver/velocity/_harmonics.py",
             "return _FOUR_PI * f", "return 1.01 * _FOUR_PI * f",
             ("tests/test_fast_backends.py",)),
    # ---- Wasserstein distances
    Mutation("w2: light-atom merge costed by the chord", "solver/analysis/_wasserstein.py",
             "theta = 2.0 * np.arcsin(np.clip(dist / 2.0, 0.0, 1.0))", "theta = dist",
             (W2, "-k", "light")),
    Mutation("w2: rounding ratio inverted", "solver/analysis/_wasserstein.py",
             "np.where(r > a, a / r, 1.0)", "np.where(r > a, r / a, 1.0)",
             (W2, "-k", "rounded or sinkhorn")),
    # ---- clusters
    Mutation("clusters: snap radius without its round-off margin",
             "solver/analysis/_clusters/_state.py",
             "reach = radius * (1 + 1e-9)", "reach = radius",
             (CL, "-k", "snap")),
    Mutation("clusters: snap radius margin too wide", "solver/analysis/_clusters/_state.py",
             "reach = radius * (1 + 1e-9)", "reach = radius * (1 + 1e-6)",
             (CL, "-k", "snap")),
    Mutation("clusters: snap of free points strict", "solver/analysis/_clusters/_state.py",
             "join = dist[np.arange(free.size), near] <= reach",
             "join = dist[np.arange(free.size), near] < radius",
             (CL, "-k", "snap")),
    Mutation("clusters: compiled walk certifies too early", "solver/analysis/_clusters/_walks.py",
             "if best >= r2[c]:  # not certified", "if best >= 4 * r2[c]:  # not certified",
             (CL, "-k", "compiled")),
    Mutation("clusters: compiled walk never searches", "solver/analysis/_clusters/_walks.py",
             "if best >= r2[c]:  # not certified", "if best < 0:  # not certified",
             (CL, "-k", "compiled")),
    # ---- stability bounds
    Mutation("stability: each layer restarts from D = 0", "solver/analysis/_stability.py",
             "D0 = float(_grow(D0, L, delta, t1 - t0))",
             "D0 = float(_grow(0.0, L, delta, t1 - t0))",
             (ST, "-k", "w2_bound")),
    Mutation("stability: capped D not carried to the next layer",
             "solver/analysis/_stability.py",
             "D0 = min(D0, S0, 2.0)", "D0 = min(D0, 2.0)",
             (ST, "-k", "w2_bound")),
    Mutation("stability: a e^a term of L_mu dropped", "solver/analysis/_stability.py",
             "v * (np.cosh(a) + a * np.exp(a))", "v * (np.cosh(a) + a)",
             (ST,)),
    Mutation("stability: the larger of the two rates", "solver/analysis/_stability.py",
             "return float(min(sum(lipschitz_constants(A, V))",
             "return float(max(sum(lipschitz_constants(A, V))",
             (ST,)),
    # ---- model: adapters and the expression language
    Mutation("lora: on='both' reuses the dV draw for dA", "solver/model/_lora.py",
             'dA = self._draw(ell, 1) if self.on in ("A", "both") else zero',
             'dA = self._draw(ell, 0) if self.on in ("A", "both") else zero',
             (GM, "-k", "random")),
    Mutation("lora: one stream for both kinds", "solver/model/_lora.py",
             "rng = np.random.default_rng([self.seed, ell, which])",
             "rng = np.random.default_rng([self.seed, ell])",
             (GM, "-k", "random")),
    Mutation("expression: node limit removed", "solver/model/_initial.py",
             "if nodes > MAX_NODES:", "if False:",
             (GM, "-k", "expression")),
    # ---- DG limiter (solver/transport/_dg.py: mutated only in the private copy)
    Mutation("dg: limiter theta = mean / (mean - low)", "solver/transport/_dg.py",
             "theta = np.clip(m / np.maximum(-lo, 1e-300) * (1.0 - MARGIN), 0.0, 1.0)",
             "theta = np.clip(m / np.maximum(m - lo, 1e-300) * (1.0 - MARGIN), 0.0, 1.0)",
             (DG, "-k", "limiter")),
    Mutation("dg: limiter without its margin", "solver/transport/_dg.py",
             "theta = np.clip(m / np.maximum(-lo, 1e-300) * (1.0 - MARGIN), 0.0, 1.0)",
             "theta = np.clip(m / np.maximum(-lo, 1e-300), 0.0, 1.0)",
             (DG, "-k", "limiter")),
    # ---- adaptive time steps
    Mutation("adaptive: every step doubled", "solver/run.py",
             "dt = min(self.cfl * min(lim[1] for lim in lims), self.max_dt)",
             "dt = min(2 * self.cfl * min(lim[1] for lim in lims), self.max_dt)",
             ("tests/test_adaptive.py", "-k", "drifting")),
    Mutation("ssp-rk3: third stage at t + dt", "solver/transport/_stepping.py",
             "euler(t + 0.5 * dt, r2)", "euler(t + dt, r2)",
             (DG, "-k", "ssp_rk3")),
    Mutation("ssp-rk3: second stage at t", "solver/transport/_stepping.py",
             "euler(t + dt, r1)", "euler(t, r1)",
             (DG, "-k", "ssp_rk3")),
    # ---- resume safety
    Mutation("resume: cfl left out of the fingerprint", "solver/run.py",
             '"cfl": repr(cfl),', "",
             ("tests/test_run_folder.py", "-k", "resume_refuses")),
    # ---- further realistic slips in the same modules
    Mutation("w2: geodesic cost not raised to p", "solver/analysis/_wasserstein.py",
             "    if p != 1:\n        M **= p\n", "",
             (W2, "-k", "sphere")),
    Mutation("w2: dual bound from one c-transform only", "solver/analysis/_wasserstein.py",
             "return float(a @ f2 + b @ g)", "return float(a @ f + b @ g)",
             (W2, "-k", "dual or sinkhorn or bracket")),
    Mutation("stability: ΔA term with the larger ‖V‖", "solver/analysis/_stability.py",
             "_op(dV) + min(v, vt) * _op(dA)", "_op(dV) + max(v, vt) * _op(dA)",
             (ST,)),
    Mutation("clusters: mass outside counts the sphere of radius δ inside",
             "solver/analysis/_clusters/_state.py",
             "outside = centre_distances(y, centres) >= delta",
             "outside = centre_distances(y, centres) > delta",
             (CL,)),
    Mutation("clusters: atoms distance without the 1/p root", "solver/analysis/_clusters/_state.py",
             "np.sum(w, axis=-1)) ** (1.0 / p)", "np.sum(w, axis=-1))",
             (CL, "-k", "atoms_distance")),
    Mutation("clusters: atoms distance squared whatever p", "solver/analysis/_clusters/_state.py",
             "np.sum(w * dist**p, axis=-1)", "np.sum(w * dist**2, axis=-1)",
             (CL, "-k", "atoms_distance")),
    Mutation("clusters: atoms distance at p = inf counts empty atoms",
             "solver/analysis/_clusters/_state.py",
             "np.max(np.where(w > 0, dist, 0.0), axis=-1)", "np.max(dist, axis=-1)",
             (CL, "-k", "atoms_distance")),
    Mutation("phase: the run's times from the reach whatever the criterion", "solver/run.py",
             "col = diag.columns.index(criterion)", 'col = diag.columns.index("reach")',
             ("tests/test_phase_convergence.py",)),
    Mutation("phase: atoms_w2 column without its square root", "solver/run.py",
             "return float(np.sqrt(s[0] / s[1]))", "return float(s[0] / s[1])",
             ("tests/test_phase_convergence.py",)),
    Mutation("phase: particles' atoms are all final base positions",
             "solver/experiments/phase_diagram.py",
             'C = find_clusters(C, None, radius=p["delta"] / 2, min_mass=ATOM_MIN_MASS).centres',
             "C = C", ("tests/test_phase_convergence.py",)),
    Mutation("phase: evolve's cluster_criterion unchecked", "solver/run.py",
             "if cluster_criterion not in CLUSTER_CRITERIA:", "if False:",
             ("tests/test_bad_input.py", "-k", "cluster_criterion")),
    Mutation("phase: quantile draws dealt per seed", "solver/experiments/phase_diagram.py",
             'if p["conv_draw"] == "quantile":  # one deterministic draw per n',
             "if False:  # one deterministic draw per n",
             ("tests/test_phase_convergence.py", "-k", "options")),
    Mutation("phase: quantiles at i/n", "solver/experiments/phase_diagram.py",
             "a = np.interp((np.arange(n) + 0.5) / n * cdf[-1], cdf, th)",
             "a = np.interp((np.arange(n) + 1.0) / n * cdf[-1], cdf, th)",
             ("tests/test_phase_convergence.py", "-k", "quantile_circle")),
    Mutation("phase: sphere quantiles at i/n", "solver/experiments/phase_diagram.py",
             "zi = np.interp((np.arange(n) + 0.5) / n * cdf[-1], cdf, z)",
             "zi = np.interp((np.arange(n) + 1.0) / n * cdf[-1], cdf, z)",
             ("tests/test_phase_convergence.py", "-k", "quantile_sphere")),
    Mutation("fast: round-off model without the chunk term", "solver/velocity/_fast.py",
             "(math.sqrt(r) + math.sqrt(self.chunk) + math.sqrt(self.C) + n + 1)",
             "(math.sqrt(r) + math.sqrt(self.C) + n + 1)",
             (FV, "-k", "formula")),
    Mutation("dg0: a cone accepted only where g >= 0 exactly (else a_K = 0)",
             "solver/transport/_dg0.py",
             "    pair = np.argmax(g.min(axis=2), axis=1)\n",
             "    pair = np.argmax(g.min(axis=2), axis=1)\n"
             "    ek = ek * (g.min(axis=2).max(axis=1) >= 0)[:, None]\n",
             ("tests/test_continuity.py", "-k", "cone_edges and numpy")),
    Mutation("dg0: the first-moment correction in every cell (no cluster weight)",
             "solver/transport/_dg0.py", "CLUSTER = (0.6, 0.9)", "CLUSTER = (2.0, 3.0)",
             ("tests/test_transport.py", "-k", "Smooth and s2")),
    Mutation("dg0: fixed cluster thresholds (no h^1/2 widening): the collapse lag stays",
             "solver/transport/_dg0.py", "    return np.sqrt(np.minimum(h / CLUSTER_H, 1.0))",
             "    return np.ones(len(h))", ("tests/test_collapse.py",)),
    Mutation("dg0: cluster thresholds widening as h (the smooth peak pays)",
             "solver/transport/_dg0.py", "    return np.sqrt(np.minimum(h / CLUSTER_H, 1.0))",
             "    return np.minimum(h / CLUSTER_H, 1.0)",
             ("tests/test_transport.py", "-k", "Smooth and s2")),
    Mutation("dg0: cluster thresholds narrower than the fixed ones on coarse cells",
             "solver/transport/_dg0.py", "    return np.sqrt(np.minimum(h / CLUSTER_H, 1.0))",
             "    return np.sqrt(h / CLUSTER_H)", ("tests/test_experiments.py", "-k", "depth")),
    Mutation("dg1: cluster zones of one layer of neighbours", "solver/transport/_dg.py",
             "    CLUSTER_RINGS = 2", "    CLUSTER_RINGS = 1",
             ("tests/test_point_mass.py", "-k", "dg1_s2")),
    # ---- particles: the cluster (Taylor-moment) velocity of collapsed particles (issue #26)
    Mutation("particles-cluster: Taylor remainder left out of the bound", CV_SRC,
             "err = ec * mass[c] * (ac ** (p + 1) / fp1 + eps) * math.exp(ac)",
             "err = ec * mass[c] * eps * math.exp(ac)", (CVT, "-k", "within_its_bound")),
    Mutation("particles-cluster: gradient coefficients without the factor beta_a + 1", CV_SRC,
             "gco = np.ascontiguousarray(coef[:, tb.grad_idx] * tb.grad_fac)",
             "gco = np.ascontiguousarray(coef[:, tb.grad_idx])", (CVT, "-k", "within_its_bound")),
    Mutation("particles-cluster: moments without 1/alpha!", CV_SRC, "coef = mom / tb.fact",
             "coef = mom", (CVT, "-k", "within_its_bound")),
    Mutation("particles-cluster: loose sources left out of the sums", CV_SRC,
             "ej = lw[j] * math.exp(e - s)", "ej = 0.0 * lw[j] * math.exp(e - s)",
             (CVT, "-k", "within_its_bound or one_term")),
    Mutation("particles-cluster: the bound without the lever |c - g|", CV_SRC,
             "etaN += err * (math.sqrt(dist) + rho[c])", "etaN += err * rho[c]",
             (CVT, "-k", "pairs_along_u")),
    Mutation("particles-cluster: acceptance at tol instead of tol/2", CV_SRC,
             "fail = ~(B <= 0.5 * self.tol * scale)", "fail = ~(B <= 1.0 * self.tol * scale)",
             (CVT, "-k", "missing_the_bound")),
    Mutation("particles-cluster: targets missing the bound not summed directly", CV_SRC,
             "X[fail] = attention_velocity(self.x[fail], self.y, w, A, V)", "pass",
             (CVT, "-k", "missing_the_bound")),
    Mutation("particles-cluster: grid cells of any size are clusters", CV_SRC,
             "big = sizes >= min_members", "big = sizes >= 1", (CVT, "-k", "grid_clusters")),
    Mutation("particles-cluster: Taylor tail with p! for (p+1)!", CV_SRC,
             "/ math.factorial(order + 1)", "/ math.factorial(order)",
             (CVT, "-k", "taylor_tail")),
    Mutation("particles-cluster: max_cost unchecked", CV_SRC, "if not max_cost > 0:",
             "if False:", (CVT, "-k", "bad_input")),
    Mutation("particles-cluster: clusters option unchecked", "solver/particles.py",
             "if not isinstance(clusters, (bool, np.bool_)):", "if False:",
             (CVT, "-k", "bad_input")),
    Mutation("particles-cluster: each rank partitions its own particles only",
             "solver/particles.py", "cluster.set_points(xl, gather_stage(xl))",
             "cluster.set_points(xl, xl)", (CVT, "-k", "rank_independent")),
    Mutation("active-dg: cells with a directional velocity left out of the live set", ADG,
             "live = _members(self._nloc, moving, self._donor_fields(moving))",
             "live = moving if self._donor_fields(moving) is None else moving", ADGT),
    Mutation("active-dg: density entered on the live owned cells only", ADG,
             "near = self._owned_near(live)", "near = live[live < nown]", ADGT),
    Mutation("active-dg: one layer of cluster zone", ADG,
             "for _ in range(op.CLUSTER_RINGS):", "for _ in range(op.CLUSTER_RINGS - 1):", ADGT),
    Mutation("active-dg: positivity step without the neighbours' speed", ADG,
             "speed = np.maximum(speed, nbn.max(axis=(1, 2)))", "pass", ADGT),
    Mutation("active-dg: limiter skips the zone cells", ADG,
             "self._rows = _members(nown, near, self._zset)",
             "self._rows = near[self._zone[near] == 0]", ADGT),
    Mutation("active-dg: first limit not on every cell", ADG,
             "self._rows = None  # the cells the last stage changed (None: limit every cell)",
             "self._rows = np.zeros(0, dtype=np.int64)", ADGT),
    Mutation("active-dg: stale directional velocity", ADG, "a[self._a_set] = 0.0", "pass", ADGT),
    Mutation("active-dg: stale centroid velocity", ADG, "uc[self._uc_set] = 0.0", "pass", ADGT),
    Mutation("active-dg: stale cluster weight", ADG, "zone[self._zset] = 0.0", "pass", ADGT),
    Mutation("active-dg: stale cluster field", ADG, "t[self._zset] = 0.0", "pass", ADGT),
    Mutation("active: resume fingerprint without the active tail", "solver/run.py",
             "degree=degree, active=active,", "degree=degree, active=None,",
             ("tests/test_run_folder.py", "-k", "refuses_every_changed")),
]
# fmt: on


def _run(cmd: list[str], cwd: Path, env: dict, timeout: float) -> tuple[int, str]:
    try:
        res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                             timeout=timeout)  # fmt: skip
        return res.returncode, res.stdout + res.stderr
    except subprocess.TimeoutExpired:
        return -1, "timeout"


def private_copy(dest: Path, worktree: bool = False) -> None:
    """HEAD's tracked files under ``dest``; with ``worktree`` also the uncommitted changes
    to them and the untracked files that git does not ignore."""

    def git(*args: str) -> bytes:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True,
                              check=True).stdout  # fmt: skip

    subprocess.run(["tar", "-x", "-C", str(dest)], input=git("archive", "HEAD"), check=True)
    if not worktree:
        return
    diff = git("diff", "HEAD", "--binary")
    if diff.strip():
        subprocess.run(["git", "apply", "--whitespace=nowarn", "-"], cwd=dest, input=diff,
                       check=True)  # fmt: skip
    for name in git("ls-files", "--others", "--exclude-standard", "-z").split(b"\0"):
        if name:
            src, dst = ROOT / name.decode(), dest / name.decode()
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)


def _raise_interrupt(signum, frame):  # SIGTERM -> the same clean-up as Ctrl-C
    raise KeyboardInterrupt


def audit(muts: list[Mutation], tree: Path, timeout: float, verbose: bool) -> list[tuple]:
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1")
    # the copy's package must be the one imported (not the editable install of ROOT)
    rc, out = _run([sys.executable, "-c", "import solver; print(solver.__file__)"], tree, env, 120)
    if rc != 0 or not out.strip().startswith(str(tree)):
        raise SystemExit(f"mutate: the copy's package is not the one imported: {out.strip()}")
    rows = []
    baseline: dict[tuple, int] = {}  # the unmutated code must pass each selection first
    for m in muts:
        path = tree / m.file
        orig = path.read_text()
        count = orig.count(m.old)
        if count != 1:
            rows.append((m, f"stale ({count} matches)", 0.0))
            print(f"{'STALE':9s} {m.name}  ({m.file}: {count} matches)", flush=True)
            continue
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *m.tests]
        if m.tests not in baseline:
            baseline[m.tests] = _run(cmd, tree, env, timeout)[0]
        if baseline[m.tests] != 0:
            rows.append((m, "baseline fails", 0.0))
            print(f"{'BASELINE':9s} {m.name}  (its tests fail without the mutation: "
                  f"pytest {' '.join(m.tests)})", flush=True)  # fmt: skip
            continue
        t0 = time.perf_counter()
        try:
            path.write_text(orig.replace(m.old, m.new))
            rc, out = _run(cmd, tree, env, timeout)
        finally:
            path.write_text(orig)
        dt = time.perf_counter() - t0
        if rc == 1:
            verdict = "caught"
        elif rc == 0:
            verdict = "SURVIVED"
        elif rc == -1:
            verdict = "timeout"
        else:
            verdict = f"error (pytest exit {rc})"
        rows.append((m, verdict, dt))
        print(f"{verdict:9s} {m.name}  ({dt:.0f} s)", flush=True)
        if verbose or verdict.startswith("error"):
            print("    " + "\n    ".join(out.strip().splitlines()[-15:]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-k", action="append", default=[], metavar="TEXT",
                    help="only mutations whose name contains TEXT (repeatable)")  # fmt: skip
    ap.add_argument("--list", action="store_true", help="print the mutations and exit")
    ap.add_argument(
        "--in-place",
        action="store_true",
        help="mutate the working tree itself (restored after each mutation)",
    )
    ap.add_argument(
        "--worktree",
        action="store_true",
        help="copy the working tree (uncommitted and untracked files) instead of HEAD",
    )
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per mutation")
    ap.add_argument("-v", "--verbose", action="store_true", help="show the tests' output tail")
    args = ap.parse_args(argv)
    muts = [m for m in MUTATIONS if not args.k or any(k in m.name for k in args.k)]
    if not muts:
        print(f"mutate: no mutation matches {args.k}", file=sys.stderr)
        return 2
    if args.list:
        for m in muts:
            print(f"{m.name}  [{m.file}]")
        return 0
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
    tmp = None
    try:
        if args.in_place:
            tree = ROOT
        else:
            tmp = Path(tempfile.mkdtemp(prefix="mutate-"))
            private_copy(tmp, worktree=args.worktree)
            tree = tmp
        rows = audit(muts, tree, args.timeout, args.verbose)
    except KeyboardInterrupt:
        print("mutate: interrupted; the mutated file was restored", file=sys.stderr)
        return 130
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    caught = sum(v == "caught" for _, v, _ in rows)
    print(f"score: {caught}/{len(rows)} caught")
    return 0 if caught == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
