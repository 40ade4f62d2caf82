"""The forgetting experiments (scripts/exp_*.py) on their tiny presets, and the sweep runner.

Each script runs in-process through its ``main(argv)``: output structure and one physical
fact each. A sweep stopped part-way (``--max-cases`` or an exception inside a case) and
restarted gives the CSV of an uninterrupted run byte for byte; so does ``mpiexec -n 2``.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

from solver.analysis import delta_cluster_state
from solver.experiments import (
    EXPERIMENT_NAMES,
    Budget,
    SweepError,
    as_columns,
    by_cost,
    case_key,
    delta_distance,
    format_value,
    load_presets,
    lora_kinds,
    parse_value,
    point_mass_depth,
    random_adapters,
    read_rows,
    resolve_params,
    run_sweep,
)
from solver.experiments.fig2 import s2_mesh_size
from solver.io import ConfigError
from solver.model import Uniform
from solver.particles import sample_particles

pytestmark = pytest.mark.serial  # in-process runs use COMM_WORLD; the MPI test launches mpiexec

ROOT = Path(__file__).resolve().parents[1]


def script(name: str):
    """Import ``scripts/exp_<name>.py`` as a module."""
    path = ROOT / "scripts" / f"exp_{name}.py"
    spec = importlib.util.spec_from_file_location(f"exp_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_tiny(name: str, out: Path, *extra: str) -> int:
    return script(name).main(["--preset", "tiny", "--output", str(out), "--no-progress", *extra])


def assert_clean(out: Path, *files: str) -> None:
    for f in files:
        assert (out / f).is_file(), f
    assert not list(out.rglob(".*.tmp")), "temporary files left behind"
    assert (out / "params.toml").is_file()


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


# ------------------------------------------------------------------------------------------
# the six experiments, tiny presets
# ------------------------------------------------------------------------------------------


def test_fig2(tmp_path):
    assert run_tiny("fig2", tmp_path) == 0
    assert_clean(tmp_path, "particles.csv", "comparison.csv", "fig2.png", "summary.json",
                 "pde/result.npz")  # fmt: skip
    p = script("fig2").PRESETS["tiny"]
    parts = as_columns(read_rows(tmp_path / "particles.csv"))
    nt = round(p["T"] / p["save_every"]) + 1
    assert len(parts["t"]) == 2 * nt * p["n"]
    assert set(parts["flow"]) == {"base", "perturbed"}
    assert np.allclose(parts["x"] ** 2 + parts["y"] ** 2, 1)
    c = as_columns(read_rows(tmp_path / "comparison.csv"))
    assert len(c["t"]) == nt and c["w2_drift_particles"][0] == 0
    # physics: the perturbation moves the tokens, more and more with depth
    assert np.all(np.diff(c["w2_drift_particles"]) > 0)
    # PDE from narrow bumps at the particles follows the particles (bump width ~ 1/sqrt(kappa))
    assert c["w2_pde_vs_particles_base"][0] < 1.5 / math.sqrt(p["kappa"])
    assert c["w2_pde_vs_particles_base"].max() < 0.3
    # the PDE's clusters drift as the particles' do (donor-cell flux: no pinning). Measured at
    # T = 12: 0.0518 (PDE) vs 0.0473 (particles), 9.5 % apart: the 20 particles and the PDE
    # cluster at slightly different times; once clustered both drift at the point-mass rate
    # (small preset, T = 60: 0.2748 vs 0.2782). The vertex-velocity scheme stayed at one cell.
    drift_pde, drift_particles = c["w2_drift_pde"][-1], c["w2_drift_particles"][-1]
    assert abs(drift_pde - drift_particles) <= 0.15 * drift_particles
    npz = np.load(tmp_path / "pde" / "result.npz")
    assert npz["density"].shape == (nt, p["cells"])
    # S^2: the particles are draws from the PDE's initial density, so their drift (angle between
    # the mean directions of mu_t and nu_t) converges to the PDE's as n -> infinity. Allowed gap:
    # 3 standard errors of the median of S draws, 1.25 sigma / sqrt(S) (sigma: the spread over
    # draws, ~ 1/sqrt(n)); a finite-n bias O(1/n); the PDE's velocity taken at cell centroids,
    # O(h^2), h = sqrt(4 pi / cells). Measured (level 3, T = 4, 4 draws of 64): PDE 0.01848,
    # particles 0.01828 (sigma 0.00048): 1.1 % apart, 6 % allowed; a pinned cluster fails.
    c2 = as_columns(read_rows(tmp_path / "comparison_s2.csv"))
    assert len(c2["t"]) == round(p["s2_T"] / p["s2_save_every"]) + 1
    assert len(read_rows(tmp_path / "particles_s2.csv")) == p["s2_seeds"] * len(c2["t"])
    assert c2["drift_pde"][0] < 1e-12 and c2["w2_pde"][0] < 1e-12
    h = s2_mesh_size(p["s2_refinement"])
    drift_p, drift_pde = c2["drift_particles_median"][-1], c2["drift_pde"][-1]
    sem = 1.2533 * c2["drift_particles_std"][-1] / math.sqrt(p["s2_seeds"])
    tol = drift_p * (h**2 + 1 / p["s2_n"]) + 3 * sem
    assert tol < 0.1 * drift_p  # the check tells a drifting cluster from a pinned one
    assert abs(drift_pde - drift_p) <= tol
    # the PDE's W2(mu_T, nu_T) is the drift plus the moving cluster's smear over about one cell
    # (DG0 resolves nothing finer): W2^2 <= drift^2 + h^2 (measured 0.0534 vs drift 0.0185)
    assert c2["w2_pde"][-1] <= math.hypot(drift_pde, h)
    assert (tmp_path / "fig2_s2.png").is_file()


def test_phase_diagram(tmp_path):
    assert run_tiny("phase_diagram", tmp_path) == 0
    assert_clean(tmp_path, "phase.csv", "phase_diagram.png", "summary.json")
    p = script("phase_diagram").PRESETS["tiny"]
    rows = read_rows(tmp_path / "phase.csv")
    assert len(rows) == len(p["spheres"]) * (p["n_eps"] + 1)
    s = summary(tmp_path)
    for sph in p["spheres"]:
        base = [r for r in rows if r["sphere"] == sph and r["eps"] == 0][0]
        # the base flow clusters in finite time and, by definition of C, never leaves
        assert 0 < base["t_enter"] < p["T"] and math.isnan(base["t_exit"])
        pert = [r for r in rows if r["sphere"] == sph and r["eps"] > 0]
        tx = np.array([r["t_exit"] for r in pert])
        fin = tx[np.isfinite(tx)]
        assert len(fin) >= 2 and np.all(np.diff(fin) < 0)  # forgetting comes sooner for larger ε
    fit = s["fits"]["S2"]
    assert 0.85 < fit["alpha"] < 1.15  # t_exit ~ 1/ε


def _sigma_rel_exit(phi0: float, delta: float, m_norm: float, d: int, n: int) -> float:
    """Predicted relative spread over draws of the particles' t_exit about the PDE's.

    Particles drawn i.i.d. from ρ0 = 1 + d⟨m, x⟩ have the mean m_n = m + O(n^{−1/2}), with
    covariance (I/d − m mᵀ)/n, so the direction of m_n (where the base flow collapses, as the
    PDE's does onto m by symmetry) is off by the angle σ_φ = √(1/(d n)) / |m| (the part of the
    covariance across m). The exit time is the point-mass law T*(φ0) = ln(tan φ0 /
    tan(φ0 − Δθ)) / ε (Δθ = 2 arcsin(δ/2)), so to first order
    σ_rel = |∂ ln T*/∂φ0| σ_φ, with ∂ ln T*/∂φ0 = (2/sin 2φ0 − 2/sin(2φ0 − 2Δθ)) / (ε T*)."""
    dth = 2 * math.asin(delta / 2)
    law = math.log(math.tan(phi0) / math.tan(phi0 - dth))
    slope = (2 / math.sin(2 * phi0) - 2 / math.sin(2 * phi0 - 2 * dth)) / law
    return abs(slope) * math.sqrt(1 / (d * n)) / m_norm


def test_pde_exit_time_converges_under_refinement():
    """The snapped reach's exit (``pde_criterion = "reach"``, :func:`solver.evolve`'s default) of
    the phase diagram's PDE (S^1, ε = 0.0178, the mean-draw density) on 128 and 256 cells
    agrees within one step. Measured 14.668 and 14.703 (512
    cells: 14.735; the crossing of the reach interpolated between steps of 0.042, 0.022,
    0.011); read cell by cell, or with the blob snapped about its centre instead of its cell's
    ring, they were 13.6 and 11.8: the blob's leading cell decided."""
    from solver.experiments.phase_diagram import phase_eps, phase_pde

    p = load_presets("phase_diagram")["paper"]
    eps = [e for e in phase_eps(p) if 0.017 < e < 0.018][0]
    out = []
    for cells in (128, 256):
        q = {**p, "pde_cells": cells, "pde_T": 16.0, "pde_criterion": "reach"}
        res = phase_pde(q, 1, eps, MPI.COMM_WORLD)
        i = np.searchsorted(res.step_times, res.t_exit)
        out.append((res.t_exit, res.step_times[i] - res.step_times[i - 1]))
    (t1, s1), (t2, s2) = out
    assert 13.0 < t2 < 16.0
    assert abs(t1 - t2) <= max(s1, s2), out


def test_phase_diagram_pde(tmp_path):
    """The PDE sweep (tiny: S^1, 128 cells, T = 32; ρ0 ∝ 1 + 2⟨m, x⟩, m the draw's mean) and
    the particles drawn from ρ0 (n = 20, 200; 8 draws) against it.

    The state is the preset's ``pde_criterion = "atoms_w2"`` (W2 to the base clusters' atoms
    below δ). Measured (2026-12-08, the h^{1/2} DG0 cluster thresholds): base t_enter = 6.619
    in every run; ε = 0.008, 0.0132, 0.0218: t_exit = 30.85, 19.34, 12.35 (ε t_exit = 0.247,
    0.255, 0.269), the point-mass law
    from the PDE's base cluster 29.32, 17.76, 10.76; ε = 0.036 (law 6.52, before μ clusters)
    never enters: forgotten before clustering. (With the snapped reach, 2026-12-07: base 7.79,
    exits 31.14, 19.58, 12.57, and ε = 0.036 entered at 8.04.) After
    clustering the PDE's cluster drifts as a point mass (donor-cell flux,
    tests/test_point_mass.py), so t_exit is the law's ln(tan φ0 / tan(φ0 − Δθ))/ε plus the
    offset b that ν accumulates while it is still spread (t ≲ 7: its collapse trails μ's):
    b = 1.53, 1.58, 1.59, one value to 4 % (the test: 10 %, and 0 < b < t_base_enter).
    The same offset makes the exponent over ε ∈ [0.008, 0.022] a little below 1 (its bootstrap
    interval measures the curvature of the three points, not noise): the test bounds it
    within ±0.15 and checks the prefactor at slope −1 against the point-mass law's L."""
    cfg = tmp_path / "cfg.toml"
    cfg.write_text("spheres = [1]\n")
    assert run_tiny("phase_diagram", tmp_path / "out", "--config", str(cfg)) == 0
    out = tmp_path / "out"
    assert_clean(out, "phase.csv", "pde.csv", "particles.csv", "phase_diagram.png",
                 "summary.json", "timing.json")  # fmt: skip
    p = script("phase_diagram").PRESETS["tiny"]
    rows = read_rows(out / "pde.csv")
    assert len(rows) == p["n_eps"] and all(r["cells"] == p["pde_cells"] for r in rows)
    c = as_columns(rows)
    # the base flow (the same in every run) clusters once and stays clustered
    assert np.all((c["t_base_enter"] > 0) & (c["t_base_enter"] < p["pde_T"]))
    assert np.ptp(c["t_base_enter"]) < 1e-3 * c["t_base_enter"][0]
    assert np.all(np.isnan(c["t_base_exit"]))
    # forgotten before clustering where a point mass leaves before the base flow clusters; ν
    # enters where it leaves well after (ν's own entry trails μ's by up to 0.37 = 6 % here;
    # near t_pm ≈ t_base_enter the two differ: small preset, ε = 0.029, 7.49 vs 6.62)
    never, tpm, tb = np.isnan(c["t_enter"]), c["t_exit_pointmass"], c["t_base_enter"]
    assert np.all((tpm < tb) | (tpm > 1.3 * tb))  # no ε of tiny is near the boundary
    # ν leaves μ's cluster an offset b after the point-mass law (below): where the law leaves
    # before μ clusters but law + b does not, ν may enter for that while (the snapped reach
    # at ε = 0.036 on 128 cells: 8.04 to 8.36; W2 to the atoms: it never enters)
    b = np.nanmax(c["t_exit"] - tpm)
    assert np.all(never[tpm + b < tb]) and not np.any(never[tpm > tb])
    assert np.all(c["t_exit"][~never & (tpm < tb)] - tpm[~never & (tpm < tb)] <= b)
    assert np.array_equal(c["t_forgotten"][never], c["t_base_enter"][never])
    assert np.all(np.isnan(c["t_forgotten"][~never]))
    # t_exit ∝ 1/ε: the point-mass law, and the fitted exponent over the finite exits
    fin = np.isfinite(c["t_exit"])
    assert fin.sum() >= 3 and np.all(c["t_exit"][fin] > c["t_enter"][fin])
    ratio = c["t_exit"][fin] / c["t_exit_pointmass"][fin]
    # t_exit = L/ε + b: after ν has collapsed its cluster drifts as the point mass does, so
    # the exit trails the law from μ's cluster by one offset b for every ε, made while ν is
    # still spread (0 < b < t_base_enter); measured b = 1.53, 1.58, 1.59
    excess = (c["t_exit"] - c["t_exit_pointmass"])[fin]
    assert np.all((excess > 0) & (excess < tb[fin])), excess
    assert np.ptp(excess) < 0.1 * excess.mean(), excess
    fit = summary(out)["pde_fits"]["S1"]
    assert 0.85 < fit["alpha"] < 1.15
    # ln(tan φ0 / tan(φ0 − Δθ)), φ0 from μ's cluster where each run ends (after ν's exit):
    # one value up to the cluster's last settling (measured 3e-5 relative)
    law = (c["eps"] * c["t_exit_pointmass"])[fin]
    assert np.ptp(law) < 1e-4 * law[0]
    # t_exit = L/ε + b fitted on the deterministic runs (no interval): L is the point-mass
    # law's and b the offset above (measured 2026-12-08: L/L_pm = 0.9965, b = 1.64 over 3
    # exits; L asserted within 5 % of the law, 0 < b < t_base_enter)
    inv = fit["inverse"]
    assert inv["n_points"] == fin.sum()
    assert abs(inv["L"] / law[0] - 1) < 0.05, (inv, law[0])
    assert fit["L_over_pointmass"] == pytest.approx(inv["L"] / fit["L_pointmass"])
    assert 0 < inv["b"] < tb[fin].min(), inv
    # particles drawn from ρ0 converge to the PDE: for the largest n the median over draws
    # and ε of |t_exit − t_PDE| / t_PDE is within 1.5 σ_rel(n) (σ_rel: the 1/√n spread of the
    # draws' cluster direction through the point-mass law; for |Z| σ the median is 0.67 σ
    # and the median of 8 draws exceeds 1.5 σ with probability 2e-3) plus the PDE's own
    # distance from that law (the offset b: up to 13.8 %). n = 20 is outside the linear
    # regime (σ_φ ≈ 0.54 rad, some draws cluster near e_2^⊥ and never exit by T): its median
    # is reported, not bounded.
    conv = summary(out)["convergence"]["S1"]
    d, n = 2, max(p["conv_n"])
    draw = sample_particles(Uniform(), p["n"], d, seed=p["seed"])  # its mean m defines ρ0
    m_norm = float(np.linalg.norm(draw.mean(axis=0)))
    sig = _sigma_rel_exit(float(c["phi0"][0]), p["delta"], m_norm, d, n)
    bias = float(np.max(np.abs(ratio - 1)))
    assert conv[str(n)]["draws"] == p["conv_seeds"][-1]
    assert conv[str(n)]["distance_exit"] <= 1.5 * sig + bias, (conv[str(n)], sig)
    # and closer than the smallest n (measured 0.094 against 0.527; missed n = 20 exits count
    # as infinitely far)
    assert conv[str(n)]["distance_exit"] < conv[str(min(p["conv_n"]))]["distance_exit"]
    parts = read_rows(out / "particles.csv")
    assert len(parts) == sum(p["conv_seeds"]) * len(conv[str(n)]["eps"])


def test_random_adapters(tmp_path):
    """Thm 4.2 on tiny (S^1, n = 32, T = 6, L = 4 and 64, η_L/√L = 0.02; 48 seeds on
    particles, 8 on the PDE, 64 cells).

    The final drift is a sum of L independent layer steps, so its mean square is
    ``(η_L/√L)² T² Var(step)`` whatever L: ``c_L = RMS W2 / (η_L/√L)`` is flat in L (γ = 0),
    whereas a law in η_L alone would make ``c_L ∝ √L`` (γ = 1/2). The interval must contain 0
    (particles, 48 seeds) and exclude 1/2 (both solvers); 1/2 lies 0.4 (particles) and 0.17
    (PDE) above the measured intervals (2026-11-29: particles γ = −0.05 [−0.16, 0.08], PDE
    γ = 0.22 [0.04, 0.33]: 8 seeds, an interval that is too narrow, see docs/experiments.md).

    PDE against particles, same seeds (adapters, and the draw whose density the PDE starts
    from): for a nearly uniform measure the symmetric part of ``ΔV`` moves no mass on average
    (``∫ x⊥ᵀ S x dσ = 0``) and only the rotation (antisymmetric part, half the variance of a
    clustered step for ``u, v ~ N(0, I/2)``) acts, so the RMS responses of a spread and of a
    clustered measure differ by at most √2 either way; the smooth PDE density clusters later
    than the 32-token draw: measured 0.64..0.76 on 64 cells (2026-12-07; 0.67..0.82 on 256
    cells, where c moves from 1.59 / 3.03 to 1.67 / 3.26 at L = 4 / 64: the 64-cell PDE
    carries a 5-7 % mesh error in c). The bound 1.5 holds √2 with the 8 seeds' noise; below,
    times 0.9 for the mesh error.
    """
    assert run_tiny("random_adapters", tmp_path) == 0
    assert_clean(tmp_path, "random_adapters.csv", "pde.csv", "random_adapters.png",
                 "summary.json")  # fmt: skip
    p = script("random_adapters").PRESETS["tiny"]
    rows = read_rows(tmp_path / "random_adapters.csv")
    assert len(rows) == len(p["Ls"]) * p["n_ratio"] * p["seeds"]
    for r in rows:
        assert r["eta"] == pytest.approx(r["ratio"] * math.sqrt(r["L"]))
    pde = read_rows(tmp_path / "pde.csv")
    assert len(pde) == len(p["Ls"]) * p["n_ratio"] * p["pde_seeds"]
    assert all(r["cells"] == p["pde_cells"] for r in pde)
    s = summary(tmp_path)
    part, fpde = s["fits"]["particles"], s["fits"]["pde"]
    # both solvers exclude γ = ±1/2 (a law in η_L alone, or its inverse); particles hold 0
    assert -0.5 < part["gamma_lo"] < 0 < part["gamma_hi"] < 0.5
    assert -0.5 < fpde["gamma_lo"] and fpde["gamma_hi"] < 0.5
    q = s["pde_over_particles"]
    assert 0.9 / 1.5 < q["min"] and q["max"] < 1.5, q


def test_depth(tmp_path):
    """Thm 4.6 on tiny (S^1, n = 20, vMF κ = 20 at 45°, Δθ = 0.1; PDE on 64 cells).

    Tied: after the cloud collapses its direction obeys the point-mass law
    ``tan φ(t) = tan φ0 e^{−εt}``, so ``ε T*`` is the law's constant; the collapse delays it
    by a time of order 1 (measured T*/law 1.009..1.040 particles, 1.010..1.033 PDE), hence
    10 % and α within ±0.1 of 1. Random (h = 0.1, ε = 0.15, 0.3): the cluster's direction is a
    random walk of steps ``ε h P_p u (vᵀp)``, so ``T* ∝ ε^{−2}``: the exponent's interval must
    exclude the tied law's 1. PDE and particles with the same seed see the same adapters; the
    cluster sits at the draw's mean direction, within ``1/√(κ n) = 0.05`` rad of the PDE's,
    and a step depends on it through ``P_p u (vᵀp)``: a relative change of order 0.05 per
    step, and of ``T*`` (measured 0.998..1.066); 15 % holds it with margin.
    """
    assert run_tiny("depth", tmp_path) == 0
    assert_clean(tmp_path, "depth.csv", "pde.csv", "depth.png", "summary.json")
    p = script("depth").PRESETS["tiny"]
    rows = read_rows(tmp_path / "depth.csv")
    n_tied = p["n_eps"] * len(p["dims"]) * len(p["theta0_deg"]) * p["seeds"]
    n_random = p["random_n_eps"] * len(p["random_dims"]) * p["random_seeds"]
    assert len(rows) == n_tied + n_random
    pde = read_rows(tmp_path / "pde.csv")
    assert len(pde) == p["n_eps"] * len(p["theta0_deg"]) + p["random_n_eps"] * p["pde_seeds"]
    fits = summary(tmp_path)["fits"]
    for solver, rr in (("particles", rows), ("pde", pde)):
        c = as_columns([r for r in rr if r["kind"] == "tied"])
        ratio = c["T_star_direction"] / c["T_star_law"]
        assert np.all(np.abs(ratio - 1) < 0.1), (solver, ratio)
        (tied,) = [f for k, f in fits[solver].items() if k.startswith("tied")]
        # one tied run per ε (tiny: 1 seed): no interval, the fitted exponent itself
        assert 0.9 < tied["exponent"] < 1.1 and tied["exponent_lo"] is None  # nan: null
        (rnd,) = [f for k, f in fits[solver].items() if k.startswith("random")]
        assert rnd["censored"] == 0 and rnd["exponent_lo"] > 1.0, (solver, rnd)
    q = summary(tmp_path)["pde_over_particles"]
    assert q["random"]["n"] == p["random_n_eps"] * p["pde_seeds"]
    for kind in ("tied", "random"):
        assert 1 / 1.15 < q[kind]["min"] and q[kind]["max"] < 1.15, q


def test_lora_kinds(tmp_path):
    assert run_tiny("lora_kinds", tmp_path) == 0
    assert_clean(tmp_path, "lora_kinds.csv", "lora_kinds.png", "summary.json")
    p = script("lora_kinds").PRESETS["tiny"]
    rows = read_rows(tmp_path / "lora_kinds.csv")
    nt = round(p["T"] / p["save_every"]) + 1
    assert len(rows) == nt * len(lora_kinds.kinds_cases(p))
    table = {r["kind"]: r for r in summary(tmp_path)["table"]}
    # physics (Prop 3.3): dV orthogonal to u1 keeps the cluster, dV = eps u2 u1^T moves it
    assert table["orthogonal"]["w2_mean"] < 0.1 * table["aligned"]["w2_mean"]
    assert table["aligned"]["drift_mean"] == pytest.approx(
        table["aligned"]["predicted_drift"], rel=0.25
    )
    assert table["orthogonal"]["predicted_drift"] == pytest.approx(0, abs=1e-12)


def test_two_clusters(tmp_path):
    assert run_tiny("two_clusters", tmp_path) == 0
    assert_clean(tmp_path, "clusters.csv", "trajectories.csv", "two_clusters.png",
                 "summary.json")  # fmt: skip
    p = script("two_clusters").PRESETS["tiny"]
    models = summary(tmp_path)["models"]
    assert models["identity beta=1"]["fraction_one"] == 1.0  # Q = K = I: one cluster
    e1 = models[f"e1e1 beta={p['betas'][0]:g}"]
    assert e1["fraction_two"] == 1.0 and e1["min_abs_x1_two"] > 0.8  # two points near ±e1
    t = read_rows(tmp_path / "trajectories.csv")
    assert len(t) == (1 + len(p["betas"])) * p["n"] * (round(p["T"] / p["save_every"]) + 1)


# ------------------------------------------------------------------------------------------
# resume, MPI, input errors
# ------------------------------------------------------------------------------------------

RESUMED = {"random_adapters": "random_adapters.csv", "lora_kinds": "lora_kinds.csv"}
#: the random-adapters tiny preset with fewer seeds (8 particle cases, 2 PDE runs)
CHEAP = {"random_adapters": "seeds = 4\npde_seeds = 1\n", "lora_kinds": ""}


def run_cheap(name: str, out: Path, *extra: str) -> int:
    """:func:`run_tiny` with :data:`CHEAP` (the config beside ``out``)."""
    cfg = out.parent / f"{out.name}-cheap.toml"
    cfg.write_text(CHEAP[name])
    return run_tiny(name, out, "--config", str(cfg), *extra)


@pytest.mark.parametrize("name", sorted(RESUMED))
def test_stopped_sweep_resumes_to_the_same_csv(tmp_path, name, capsys):
    csv = RESUMED[name]
    assert run_cheap(name, tmp_path / "ref") == 0
    ref = (tmp_path / "ref" / csv).read_bytes()
    job = tmp_path / "job"
    assert run_cheap(name, job, "--max-cases", "3") == 0
    assert "stopped after 3" in capsys.readouterr().out
    key = {"random_adapters": ["L", "ratio", "seed"], "lora_kinds": ["kind", "eps", "seed"]}[name]
    assert len({case_key(r, key) for r in read_rows(job / csv)}) == 3
    assert not (job / "summary.json").exists() and not list(job.glob("*.png"))
    assert_clean(job, csv)
    assert run_cheap(name, job) == 0
    assert (job / csv).read_bytes() == ref
    assert (job / "summary.json").read_text() == (tmp_path / "ref" / "summary.json").read_text()


def test_crash_inside_a_case_leaves_complete_files(tmp_path, monkeypatch):
    assert run_cheap("random_adapters", tmp_path / "ref") == 0
    real = random_adapters.random_adapter_case
    calls = {"n": 0}

    def crashing(p, case):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real(p, case)

    monkeypatch.setattr(random_adapters, "random_adapter_case", crashing)
    job = tmp_path / "job"
    with pytest.raises(KeyboardInterrupt):
        run_cheap("random_adapters", job)
    rows = read_rows(job / "random_adapters.csv")
    assert len(rows) == 2
    assert_clean(job, "random_adapters.csv")
    monkeypatch.setattr(random_adapters, "random_adapter_case", real)
    assert run_cheap("random_adapters", job) == 0
    for f in ("random_adapters.csv", "pde.csv"):
        assert (job / f).read_bytes() == (tmp_path / "ref" / f).read_bytes(), f


@pytest.mark.mpi
def test_two_ranks_give_the_same_csv(tmp_path, run):
    """Particles (cases dealt to the ranks) and the PDE (every rank in every case): the same
    CSV files and summary on 1 and 2 ranks, stopped and resumed."""
    path = "scripts/exp_random_adapters.py"
    cfg = tmp_path / "cheap.toml"
    cfg.write_text(CHEAP["random_adapters"])
    args = ["--preset", "tiny", "--no-progress", "--config", str(cfg)]
    p1 = run([path, *args, "--output", str(tmp_path / "one")], 1)
    assert p1.returncode == 0, p1.stderr
    # two ranks, stopped after 3 cases (taken one by one by the free rank), then resumed
    p2 = run([path, *args, "--output", str(tmp_path / "two"), "--max-cases", "3"], 2)
    assert p2.returncode == 0, p2.stderr
    assert p2.stdout.count("stopped after") == 1  # rank 0 alone prints
    assert len(read_rows(tmp_path / "two" / "random_adapters.csv")) == 3
    p2 = run([path, *args, "--output", str(tmp_path / "two")], 2)
    assert p2.returncode == 0, p2.stderr
    for f in ("random_adapters.csv", "pde.csv", "summary.json"):
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes(), f


@pytest.mark.mpi
def test_fig2_two_ranks_agree(tmp_path, run):
    """Fig 2 (particles and the PDE on S^1 and S^2) on 1 and 2 ranks: the particle files and
    the S^1 comparison byte for byte; the S^2 comparison, whose PDE sums run over the ranks'
    cells, to round-off (measured 2.4e-14, through the arccos of the drift angle)."""
    args = ["scripts/exp_fig2.py", "--preset", "tiny", "--no-progress", "--output"]
    for n, name in ((1, "one"), (2, "two")):
        p = run([*args, str(tmp_path / name)], n)
        assert p.returncode == 0, p.stderr
    one, two = tmp_path / "one", tmp_path / "two"
    for f in ("particles.csv", "particles_s2.csv", "comparison.csv"):
        assert (one / f).read_bytes() == (two / f).read_bytes(), f
    a, b = (as_columns(read_rows(d / "comparison_s2.csv")) for d in (one, two))
    assert a.keys() == b.keys()
    for k in a:
        if np.issubdtype(np.asarray(a[k]).dtype, np.number):
            np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-12, err_msg=k)
        else:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_config_errors_name_the_field(tmp_path, capsys):
    mod = script("depth")
    bad = tmp_path / "bad.toml"
    bad.write_text("n_eps = 3\nwhatever = 1\n")
    assert mod.main(["--config", str(bad), "--output", str(tmp_path / "a")]) == 2
    assert "whatever" in capsys.readouterr().err
    bad.write_text('n = "many"\n')
    assert mod.main(["--config", str(bad), "--output", str(tmp_path / "a")]) == 2
    assert "n must be an integer" in capsys.readouterr().err
    bad.write_text("eps_min = -1.0\n")
    assert mod.main(["--config", str(bad), "--output", str(tmp_path / "a")]) == 2
    assert "eps_min must be > 0" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()  # nothing written for invalid input
    # a folder made with other parameters is not silently mixed with new ones
    out = tmp_path / "b"
    assert run_tiny("random_adapters", out, "--max-cases", "1") == 0
    other = tmp_path / "other.toml"
    other.write_text("T = 5.0\n")
    assert script("random_adapters").main(["--preset", "tiny", "--config", str(other),
                                           "--output", str(out)]) == 2  # fmt: skip
    assert "['T']" in capsys.readouterr().err


def test_presets_live_in_the_experiment_modules():
    for name in EXPERIMENT_NAMES:
        presets = load_presets(name)
        assert sorted(presets) == ["paper", "small", "tiny"]
        assert script(name).PRESETS == presets  # the script runs the module's presets
    with pytest.raises(ValueError, match="unknown experiment 'fig3'"):
        load_presets("fig3")


def test_resolve_params():
    preset = {"a": 1.0, "n": 2, "xs": [1.0, 2.0], "name": "x"}
    p = resolve_params(preset, {"a": 3, "xs": [1, 5]})
    assert p == {"a": 3.0, "n": 2, "xs": [1.0, 5.0], "name": "x"}
    assert isinstance(p["a"], float)
    with pytest.raises(ConfigError, match=r"xs\[1\]"):
        resolve_params(preset, {"xs": [1.0, "b"]})
    with pytest.raises(ConfigError, match="true"):
        resolve_params({"flag": True}, {"flag": 1})


# ------------------------------------------------------------------------------------------
# the sweep runner and helpers
# ------------------------------------------------------------------------------------------


def test_values_round_trip():
    for v in (0.1, 1e-300, -2.5e17, 1 / 3, 3, float("nan"), float("inf"), "tied"):
        s = format_value(v)
        back = parse_value(s)
        assert format_value(back) == s
        if isinstance(v, float) and not math.isnan(v):
            assert back == v
    assert format_value(np.float64(0.1)) == "0.1" and format_value(np.int64(4)) == "4"
    for bad in ("a,b", "", 'q"', " x"):
        with pytest.raises(ValueError):
            format_value(bad)
    assert case_key({"eps": 0.01, "seed": 3, "x": 1}, ["eps", "seed"]) == "eps=0.01;seed=3"


def test_sweep_runner(tmp_path):
    cases = [{"k": i, "name": f"c{i}"} for i in range(5)]
    seen = []

    def compute(c):
        seen.append(c["k"])
        return [{"v": c["k"] * 0.1, "w": j} for j in range(c["k"] % 2 + 1)]

    path = tmp_path / "s.csv"
    res = run_sweep(path, cases, compute, key=["k", "name"], columns=["v", "w"],
                    progress=False, budget=Budget(2))  # fmt: skip
    assert not res.complete and res.computed == 2 and seen == [0, 1]
    res = run_sweep(path, cases, compute, key=["k", "name"], columns=["v", "w"], progress=False)
    assert res.complete and res.computed == 3 and seen == [0, 1, 2, 3, 4]
    assert len(res.rows) == 1 + 2 + 1 + 2 + 1
    assert res.rows[1] == {"k": 1, "name": "c1", "v": 0.1, "w": 0}
    assert path.read_text().splitlines()[0] == "k,name,v,w"
    # nothing left to do: nothing recomputed
    run_sweep(path, cases, compute, key=["k", "name"], columns=["v", "w"], progress=False)
    assert len(seen) == 5
    with pytest.raises(SweepError, match="not in this sweep"):
        run_sweep(path, cases[:2], compute, key=["k", "name"], columns=["v", "w"],
                  progress=False)  # fmt: skip
    with pytest.raises(SweepError, match="another sweep"):
        run_sweep(path, cases, compute, key=["k"], columns=["v", "w"], progress=False)
    with pytest.raises(ValueError, match="not unique"):
        run_sweep(tmp_path / "t.csv", cases + cases[:1], compute, key=["k"],
                  columns=["v", "w"], progress=False)  # fmt: skip
    with pytest.raises(SweepError, match="row columns"):
        run_sweep(tmp_path / "u.csv", cases, lambda c: {"v": 1.0}, key=["k"],
                  columns=["v", "w"], progress=False)  # fmt: skip
    # "together" mode: every rank computes every case, rank 0's rows are written
    res = run_sweep(
        tmp_path / "w.csv",
        cases[:2],
        lambda c: {"v": 1.0, "w": 2.0},
        key=["k"],
        columns=["v", "w"],
        comm=MPI.COMM_WORLD,
        mode="together",
        progress=False,
    )
    assert res.complete and len(res.rows) == 2


def test_by_cost_is_longest_first():
    assert by_cost([1.0] * 4) == [0, 1, 2, 3]  # equal costs: list order
    assert by_cost([1, 9, 2, 9, 3]) == [1, 3, 4, 2, 0]
    assert by_cost([]) == []
    for bad in ([1.0, -1.0], [math.nan], [math.inf]):
        with pytest.raises(ValueError, match="non-negative"):
            by_cost(bad)


#: run under mpiexec by test_dealt_cases_do_not_wait_and_failures_end_every_rank
DEALT = """
import sys, time
from pathlib import Path
import mpi4py
threaded = sys.argv[2] == "multiple"
mpi4py.rc.thread_level = sys.argv[2]
from mpi4py import MPI
from solver.experiments import SweepError, read_rows, run_sweep
comm, out = MPI.COMM_WORLD, Path(sys.argv[1])
assert (MPI.Query_thread() >= MPI.THREAD_MULTIPLE) == threaded
cases = [{"k": k, "cost": c} for k, c in enumerate([1.0, 1.0, 9.0, 1.0, 1.0])]

def compute(case):  # the long case 2 (taken first) ends only when all the others are done
    if case["k"] == 2 and threaded:
        t0 = time.monotonic()
        while not all((out / f"done{k}").exists() for k in (0, 1, 3, 4)):
            if time.monotonic() - t0 > 60:
                raise RuntimeError("the other cases waited for case 2")
            time.sleep(0.01)
    (out / f"done{case['k']}").touch()
    return {"v": case["k"] ** 2, "rank": comm.rank}

kw = dict(key=["k"], comm=comm, progress=False, cost=lambda c: c["cost"])
res = run_sweep(out / "a.csv", cases, compute, columns=["v", "rank"], **kw)
assert res.complete and [r["v"] for r in res.rows] == [0, 1, 4, 9, 16]
long = [r["rank"] for r in res.rows if r["k"] == 2][0]
assert all(r["rank"] != long for r in res.rows if r["k"] != 2) or not threaded, res.rows

def failing(case):
    if case["k"] == 1:
        raise ValueError("bad case")
    return {"v": 1}

for attempt in range(2):  # the first failure leaves nothing behind for the second sweep
    try:
        run_sweep(out / "b.csv", cases, failing, columns=["v"], **kw)
    except (SweepError, ValueError) as e:
        print(f"[{comm.rank}] {type(e).__name__}: {e}", flush=True)
done = {r["k"] for r in read_rows(out / "b.csv")}
res = run_sweep(out / "b.csv", cases, lambda c: {"v": 2}, columns=["v"], **kw)  # the rest
assert 1 not in done and res.complete and res.computed == 5 - len(done)
print(f"[{comm.rank}] ok", flush=True)
"""


@pytest.mark.mpi
@pytest.mark.parametrize("nprocs,level", [(2, "multiple"), (3, "multiple"), (2, "serialized")])
def test_dealt_cases_do_not_wait_and_failures_end_every_rank(tmp_path, run, nprocs, level):
    """``"cases"`` mode: the ranks take the cases one by one as they become free, the costliest
    first: case 2 (cost 9) starts first and finishes only after the other four, which the
    other ranks compute meanwhile (with batches in lock step they would wait for it for ever);
    a failing case ends the sweep on every rank with its message, and the next sweep on the
    same communicator runs normally. Without ``MPI_THREAD_MULTIPLE`` rank 0 deals between its
    own cases instead: the same rows and errors."""
    (tmp_path / "dealt.py").write_text(DEALT)
    p = run([str(tmp_path / "dealt.py"), str(tmp_path), level], nprocs, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    for r in range(nprocs):
        assert f"[{r}] ok" in p.stdout
        assert p.stdout.count(f"[{r}] ") == 3, p.stdout
    # each time: the rank of case 1 raises the case's error, every other one the sweep's
    assert p.stdout.count("] ValueError: bad case") == 2, p.stdout
    assert p.stdout.count("SweepError: case k=1 failed on rank") == 2 * (nprocs - 1)


def test_helpers_match_the_definitions():
    rng = np.random.default_rng(0)
    pos = rng.normal(size=(6, 15, 3))
    pos /= np.linalg.norm(pos, axis=-1, keepdims=True)
    C = pos[-1, :4]
    D = delta_distance(pos, C)
    for k in range(len(pos)):
        for delta in (0.3, 1.0, 1.5):
            assert (D[k] < delta) == delta_cluster_state(pos[k], C, delta)
    # the point-mass law against the exact solution p(t) = e^{tṼ} p0 / |.|
    eps, th0, dth = 0.05, math.radians(40), 0.1
    p0 = np.array([math.cos(th0), math.sin(th0)])
    T = point_mass_depth(p0, eps, dth)
    p = np.array([p0[0], p0[1] * math.exp(-eps * T)])
    assert math.atan2(p[1], p[0]) == pytest.approx(th0 - dth, abs=1e-12)
    assert math.isnan(point_mass_depth(p0, 0.0, dth))


# ------------------------------------------------------------------------------------------
# Fig 4: the antipodal two-cluster state is a saddle with rate λ(β) = 2 / (1 + e^{2β})
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "beta,d,n_a,T",
    [(1.0, 2, 1, 20.0), (4.0, 2, 1, 100.0), (1.0, 3, 2, 20.0), (4.0, 3, 1, 100.0)],
)
def test_two_cluster_saddle_rate_matches_point_masses(beta, d, n_a, T):
    """Point masses m_a = n_a/(n_a + 1) at x_a (turned by δ0 from e1 towards e_d) and m_b at
    −e1, simulated as n_a + 1 particles. The antipodality defect Δ (angle between x_a and −x_b)
    obeys Δ' = ρ Δ with |ρ/λ − 1| ≤ (2β + 1) Δ_max² (the weights w move by ≤ 3β/2 max angle²
    relative, sin Δ/Δ by Δ²/6); RK4 on this 1-D linear mode adds (λ dt)^4/120 relative."""
    from solver.experiments.two_clusters import saddle_growth_rate
    from solver.model import Model
    from solver.particles import simulate_particles

    lam = saddle_growth_rate(beta, mass=n_a / (n_a + 1))
    delta0 = 1e-3 * math.exp(-lam * T)  # Δ(T) ≈ 1e-3
    xa = np.zeros(d)
    xa[0], xa[-1] = math.cos(delta0), math.sin(delta0)
    xb = -np.eye(d)[0]
    x0 = np.array([xa] * n_a + [xb])
    M = np.diag([math.sqrt(beta)] + [0.0] * (d - 1))
    dt = 0.05
    r = simulate_particles(Model(M, M, np.eye(d)), x0, T, dt=dt, save_every=T)
    x = r.positions[-1]
    defect = math.acos(min(1.0, float(-x[0] @ x[-1])))
    rate = math.log(defect / delta0) / T
    tol = (2 * beta + 1) * defect**2 + (lam * dt) ** 4 / 120 + 1e-12 / (lam * T)
    assert abs(rate / lam - 1) <= tol, (rate, lam, tol)
    assert defect > 1.5 * delta0 or lam * T < 0.5  # the defect grew (β = 1)


def test_saddle_rate_separates_the_two_betas():
    """λ(1) = 2/(1+e²) = 0.238 (e-folding 4.2 ≪ T = 100: the clusters merge), λ(4) =
    2/(1+e⁸) = 6.7e-4 (e-folding 1490 ≫ T: they survive)."""
    from solver.experiments.two_clusters import saddle_growth_rate

    assert saddle_growth_rate(1.0) == pytest.approx(2 / (1 + math.e**2), rel=1e-14)
    assert 1 / saddle_growth_rate(1.0) < 5 and 1 / saddle_growth_rate(4.0) > 1000
    with pytest.raises(ValueError, match="mass"):
        saddle_growth_rate(1.0, mass=1.0)


@pytest.mark.parametrize("geometry", ["euclidean", "euclidean-rescaled"])
def test_phase_diagram_euclidean_geometries(tmp_path, geometry):
    """The authors' setting (x0 uniform in [−1, 1]², Ṽ = diag(1, 1 − ε)). Static attention
    (geometry='euclidean'): the tokens collapse to one point at rest and the perturbed point
    stays within δ of it (no exit). Their code's rescaled attention Q e^{tṼ}: t_exit ≈ 1/ε."""
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(f'geometry = "{geometry}"\nspheres = [1]\neps_min = 0.02\neps_max = 0.08\n')
    assert run_tiny("phase_diagram", tmp_path / "out", "--config", str(cfg)) == 0
    rows = read_rows(tmp_path / "out" / "phase.csv")
    base = [r for r in rows if r["eps"] == 0][0]
    assert 0 < base["t_enter"] < 10 and math.isnan(base["t_exit"])
    pert = [r for r in rows if r["eps"] > 0]
    tx = np.array([r["t_exit"] for r in pert])
    if geometry == "euclidean":
        assert np.all(np.isnan(tx)) and max(r["final_distance"] for r in pert) < 1e-3
    else:
        eps = np.array([r["eps"] for r in pert])
        assert np.all(np.isfinite(tx)) and np.all(np.diff(tx) < 0)
        # measured ε t_exit = 1.022, 1.026, 1.031, 1.045 (ε = 0.02 .. 0.08): within 1.1
        # (2x the largest excess over 1/ε), and never before 1/ε
        assert np.all((tx * eps > 1.0) & (tx * eps < 1.1)), tx * eps


def test_lora_kinds_worst_adapter_beats_aligned(tmp_path):
    """ε = 0.05 < gap/2: the worst rank-one adapter (u ⟂ v, sin 2θ = 2ε/gap) moves the final
    cluster by 2 sin(θ/2) = 0.2611 against 0.2444 for u2 u1ᵀ. The cluster reaches ũ1 at the rate
    λ̃1 − λ̃2 ≈ 0.17, so by T = 40 it is within e^{−6.9} ≈ 1e-3 of it (relative)."""
    cfg = tmp_path / "cfg.toml"
    cfg.write_text('eps = [0.05]\nkinds = ["aligned", "worst"]\nT = 40.0\nsave_every = 10.0\n')
    assert run_tiny("lora_kinds", tmp_path / "out", "--config", str(cfg)) == 0
    table = {r["kind"]: r for r in summary(tmp_path / "out")["table"]}
    theta = 0.5 * math.asin(2 * 0.05 / 0.2)
    assert table["worst"]["predicted_drift"] == pytest.approx(2 * math.sin(theta / 2), abs=1e-8)
    assert table["worst"]["drift_mean"] == pytest.approx(table["worst"]["predicted_drift"],
                                                         rel=0.01)  # fmt: skip
    assert table["worst"]["drift_mean"] > 1.05 * table["aligned"]["drift_mean"]
