r"""The spectral gap of ``V`` (Prop 3.3, Remark 3.4, T* of arXiv 2402.15415): a family of value
matrices ``V = U (diag(λ) + s e_1 e_2ᵀ) Uᵀ`` with ``λ = (1, 1 − g, (1 − g)/2, ...)`` (gap
``g = λ1 − λ2``; ``s ≠ 0``: ``V`` not symmetric, same eigenvalues and top eigenvector
``u1 = U e_1``), ``A = Kᵀ Q = V`` (the proposition's assumption), tied adapters on ``V`` only:

* ``sym``: ``ΔV = ε x xᵀ`` with ``x = cos φ u1 + sin φ u2``: aligned (φ = 0), at an angle,
  orthogonal (φ = 90°: ``ΔV = ε u2 u2ᵀ``, the orthogonal LoRA of the paper);
* ``coupling``: ``ΔV = ε u2 u1ᵀ`` (not symmetric: ``a = 0``, ``|b| = ε``, ``E = 0``).

The statements checked (``docs/experiments.md``; tests/test_spectral_gap.py):

* Prop 3.3: with ``a = u1ᵀΔV u1``, ``b = P⊥ΔV u1``, ``E = P⊥ΔV P⊥``, if
  ``gap + a > 2|b| + ‖E‖`` both flows cluster, at ``u1`` and ``ũ1`` (top eigenvector of
  ``Ṽ``), and ``|u1 − ũ1| ≲ (2|b| + ‖E‖)/(gap + a)``. Measured: the final cluster directions
  of the two flows, their chordal distance (``drift``) against ``|u1 − ũ1|`` (``predicted``)
  and against the bound.
* where it is tight: orthogonal ``ΔV`` (``a = b = 0``, ``‖E‖ = ε``) the criterion is
  ``ε < gap``, exactly the switch of the top eigenvector (for ``ε > gap`` the perturbed flow
  leaves to ``u2``); ``coupling`` the criterion asks ``ε < gap/2`` but the drift
  ``tan θ = ε/gap`` stays finite for every ε, and the bound ``2ε/gap`` is twice the drift.
* Remark 3.4: ``|u1 − ũ1|² ≃ Σ_j (α_j / (λ1 + a − λ_j − e_j))²`` (``first_order``).
* T*: the first depth at which the two flows' cluster directions are ``Δθ = 2 arcsin(δ/2)``
  apart, against the point-mass law ``∠(e^{tV} p0, e^{tṼ} p0) = Δθ`` (:func:`point_mass_angle`,
  ``p0`` the initial mean direction); with a gap and ``ε`` below it the angle stays bounded
  (no T*, no forgetting at any depth); for ``g → 0`` it becomes the ``1/ε`` law of Fig 2.

Tokens: a von Mises-Fisher cloud (κ) centred at ``cos θ0 u1 + sin θ0 w`` (``w`` in the span of
``u2, u3``), all with ``⟨x, u1⟩ ≥ γ > 0`` (``gamma`` column; Prop 3.3's hypothesis). Each case
runs to ``T = min(T_max, t_factor / r)``, ``r`` the smaller spectral gap of ``V`` and ``Ṽ``
(the rate at which the directions converge), on particles (``spectral_gap.csv``) and on the
PDE (``pde.csv``: S^1 for ``d = 2``, S^2 for ``d = 3``; DG0, adaptive; directions from the
first moments at every step). Figure ``spectral_gap.png``. ``scripts/exp_spectral_gap.py``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy.linalg import expm

from ..analysis import cluster_direction, crossing_times, spectral_criterion
from ..model import Model, TiedLoRA, VonMisesFisher
from ..particles import sample_particles, simulate_particles
from ._common import memo
from ._experiment import Experiment, Run, Sweep, run_experiment
from ._figures import figure, save_png
from ._params import positive, require
from ._stats import angle, directions, w2

__all__ = ["PRESETS", "EXPERIMENT", "run_spectral_gap", "gap_case", "gap_pde_case",
           "gap_models", "criterion", "point_mass_angle", "point_mass_tstar", "gap_summary",
           "plot_spectral_gap"]  # fmt: skip

PRESETS = {
    "tiny": {"dims": [2], "n": 16, "kappa": 20.0, "theta0_deg": 40.0, "gaps": [0.2],
             "eps": [0.1, 0.3], "phis_deg": [0.0, 45.0, 90.0], "coupling": True,
             "skews": [0.0, 0.3], "delta": 0.1, "dt": 0.1, "t_factor": 12.0, "T_max": 200.0,
             "pde_cells": 64, "pde_refinement": 2, "pde_dims": [2]},
    "small": {"dims": [2, 3], "n": 32, "kappa": 20.0, "theta0_deg": 40.0,
              "gaps": [0.0, 0.05, 0.2, 0.5], "eps": [0.02, 0.1, 0.3],
              "phis_deg": [0.0, 30.0, 60.0, 90.0], "coupling": True, "skews": [0.0, 0.3],
              "delta": 0.1, "dt": 0.1, "t_factor": 12.0, "T_max": 300.0, "pde_cells": 128,
              "pde_refinement": 2, "pde_dims": [2]},
    "paper": {"dims": [2, 3], "n": 64, "kappa": 20.0, "theta0_deg": 40.0,
              "gaps": [0.0, 0.02, 0.05, 0.1, 0.2, 0.5], "eps": [0.01, 0.03, 0.1, 0.3],
              "phis_deg": [0.0, 30.0, 60.0, 90.0], "coupling": True, "skews": [0.0, 0.3],
              "delta": 0.1, "dt": 0.1, "t_factor": 12.0, "T_max": 600.0, "pde_cells": 256,
              "pde_refinement": 3, "pde_dims": [2, 3]},
}  # fmt: skip

COLUMNS = ["T", "gamma", "a", "b_norm", "E_norm", "stable", "bound", "predicted",
           "first_order", "drift", "base_to_u1", "pert_to_u1t", "w2_T", "t_star",
           "t_star_law", "max_angle_law"]  # fmt: skip
PDE_COLUMNS = ["T", "drift", "base_to_u1", "pert_to_u1t", "w2_T", "t_star", "t_star_law",
               "cells", "steps"]  # fmt: skip
KEY = ("d", "skew", "gap", "kind", "phi_deg", "eps")


def gap_check(p: dict) -> None:
    positive(p, "n", "kappa", "delta", "dt", "t_factor", "T_max", "pde_cells")
    require(p, "dims", all(d >= 2 for d in p["dims"]), "a list of dimensions >= 2")
    require(p, "pde_dims", all(d in (2, 3) and d in p["dims"] for d in p["pde_dims"]),
            f"a sublist of dims = {p['dims']} with 2 (S^1) or 3 (S^2)")  # fmt: skip
    require(p, "gaps", all(0 <= g <= 1 for g in p["gaps"]), "gaps in [0, 1] (V ⪰ 0)")
    require(p, "eps", all(e > 0 for e in p["eps"]), "positive perturbation norms")
    require(p, "phis_deg", all(0 <= f <= 90 for f in p["phis_deg"]), "angles in [0, 90]")
    require(p, "theta0_deg", 0 <= p["theta0_deg"] < 80, "an angle in [0, 80) degrees")
    require(p, "pde_refinement", p["pde_refinement"] >= 1, ">= 1")


def _basis(d: int) -> np.ndarray:
    """A fixed rotation ``U`` (columns ``u1, u2, ...``): ``u1`` is no coordinate axis."""
    q, r = np.linalg.qr(np.random.default_rng(7).normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def gap_models(d: int, gap: float, skew: float, kind: str, phi_deg: float, eps: float):
    """``(base, perturbed, U)``: ``V = A = U (diag(λ) + s e1 e2ᵀ) Uᵀ`` and ``Ṽ = V + ΔV``
    (module doc); ``ΔA = 0``."""
    U = _basis(d)
    lam = np.array([1.0, 1.0 - gap] + [0.5 * (1.0 - gap)] * (d - 2))
    D = np.diag(lam)
    D[0, 1] += skew
    V = U @ D @ U.T
    u1, u2 = U[:, 0], U[:, 1]
    if kind == "sym":
        f = math.radians(phi_deg)
        x = math.cos(f) * u1 + math.sin(f) * u2
        dV = eps * np.outer(x, x)
    elif kind == "coupling":
        dV = eps * np.outer(u2, u1)
    else:
        raise ValueError(f"kind must be 'sym' or 'coupling', got {kind!r}")
    base = Model.from_AV(V, V)
    return base, base.perturbed(TiedLoRA(np.zeros((d, d)), dV)), U


def _top(M: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, float]:
    """Unit eigenvector of ``M`` for its eigenvalue of largest real part (sign: ``⟨·, ref⟩ ≥ 0``)
    and the real gap to the next eigenvalue."""
    mu, W = np.linalg.eig(M)
    o = np.argsort(-mu.real)
    u = np.real(W[:, o[0]])
    u /= np.linalg.norm(u)
    return (u if u @ ref >= 0 else -u), float(mu.real[o[0]] - mu.real[o[1]])


def criterion(V: np.ndarray, dV: np.ndarray, u1: np.ndarray) -> dict:
    """Prop 3.3's quantities (:func:`solver.analysis.spectral_criterion` for symmetric ``V``;
    the same formulas with ``u1`` the top eigenvector otherwise), ``|u1 − ũ1|``, Remark 3.4's
    first-order drift, and the rate ``min(gap(V), gap(Ṽ))``."""
    _, g0 = _top(V, u1)
    ut, g1 = _top(V + dV, u1)
    if np.allclose(V, V.T, atol=1e-12):
        c = spectral_criterion(V, dV)
        out = {"a": c.a, "b_norm": c.b_norm, "E_norm": c.E_norm, "stable": float(c.stable),
               "bound": c.drift_bound, "first_order": c.first_order_drift}  # fmt: skip
    else:
        P = np.eye(len(u1)) - np.outer(u1, u1)
        a, b, E = float(u1 @ dV @ u1), P @ dV @ u1, P @ dV @ P
        bn, En = float(np.linalg.norm(b)), float(np.linalg.norm(E, 2))
        out = {"a": a, "b_norm": bn, "E_norm": En, "stable": float(g0 + a > 2 * bn + En),
               "bound": (2 * bn + En) / (g0 + a) if g0 + a > 0 else math.inf,
               "first_order": math.nan}  # fmt: skip
    out["predicted"] = float(np.linalg.norm(u1 - ut))
    out["rate"] = min(g0, g1)
    out["u1_tilde"] = ut
    return out


def point_mass_angle(V, Vt, p0, times) -> np.ndarray:
    """``∠(e^{tV} p0, e^{tṼ} p0)`` at ``times``: the angle between a point mass moved by the
    base and by the perturbed flow (``X[δ_p](p) = P_p V p``, whatever ``A``)."""
    p0 = np.asarray(p0, dtype=float)
    # e^{t(M − c I)} p0 has the direction of e^{tM} p0 and no overflow (c: top real part)
    V0 = V - np.linalg.eigvals(V).real.max() * np.eye(len(p0))
    Vt0 = Vt - np.linalg.eigvals(Vt).real.max() * np.eye(len(p0))
    out = []
    for t in times:
        a, b = expm(t * V0) @ p0, expm(t * Vt0) @ p0
        out.append(float(angle(a / np.linalg.norm(a), b / np.linalg.norm(b))))
    return np.array(out)


def point_mass_tstar(V, Vt, p0, T: float, dtheta: float, num: int = 2001):
    """``(T*_law, max angle)``: the first time the point-mass angle reaches ``dtheta`` on
    ``[0, T]`` (linear interpolation on ``num`` times; ``nan`` if never) and its maximum."""
    t = np.linspace(0.0, T, num)
    ang = point_mass_angle(V, Vt, p0, t)
    return crossing_times(t, -ang, -dtheta)[0], float(ang.max())


def _to_axis(u: np.ndarray, axis: np.ndarray) -> float:
    """``min(|u − axis|, |u + axis|)``: the distance to the eigen-direction, either sign (a
    cluster sits at ``ũ1`` or ``−ũ1``; ``ũ1 ⟂ u1`` leaves the sign open)."""
    return float(min(np.linalg.norm(u - axis), np.linalg.norm(u + axis)))


def _dtheta(p: dict) -> float:
    return 2 * math.asin(p["delta"] / 2)


def gap_cases(p: dict) -> list[dict]:
    """Every d, skew, gap, ε and adapter (``sym`` at each φ, and ``coupling``)."""
    kinds = [("sym", float(f)) for f in p["phis_deg"]]
    kinds += [("coupling", 0.0)] if p["coupling"] else []
    return [{"d": d, "skew": s, "gap": g, "kind": k, "phi_deg": f, "eps": e}
            for d in p["dims"] for s in p["skews"] for g in p["gaps"] for k, f in kinds
            for e in p["eps"]]  # fmt: skip


def gap_pde_cases(p: dict) -> list[dict]:
    """The cases of ``pde_dims`` with symmetric ``V`` (``skew = 0``)."""
    return [c for c in gap_cases(p) if c["d"] in p["pde_dims"] and c["skew"] == 0]


def _setup(p: dict, case: dict):
    d = int(case["d"])
    base, pert, U = gap_models(d, float(case["gap"]), float(case["skew"]), case["kind"],
                               float(case["phi_deg"]), float(case["eps"]))  # fmt: skip
    crit = criterion(base.V, pert.perturbation.dV, U[:, 0])
    r = crit["rate"]
    T = p["T_max"] if r <= 1e-9 else min(p["T_max"], p["t_factor"] / r)
    T = round(math.ceil(T / p["dt"]) * p["dt"], 9)
    th = math.radians(p["theta0_deg"])
    w = U[:, 1] if d == 2 else (math.cos(0.5) * U[:, 1] + math.sin(0.5) * U[:, 2])
    centre = math.cos(th) * U[:, 0] + math.sin(th) * w
    return base, pert, U, crit, T, centre


def gap_cost(p: dict, case: dict) -> float:
    return _setup(p, case)[4]


def gap_case(p: dict, case: dict) -> dict:
    """One case on the particles: base and perturbed flows from the same vMF draw (seed 0) to
    ``T``; the final cluster directions, their drift, ``W2(μ_T, ν_T)``, T* and the laws."""
    base, pert, U, crit, T, centre = _setup(p, case)
    d, u1 = int(case["d"]), U[:, 0]
    x0 = sample_particles(VonMisesFisher(tuple(centre), p["kappa"]), p["n"], d, seed=0)
    dt = p["dt"]
    key = ("gap-base", d, case["skew"], case["gap"], p["n"], p["kappa"], T, dt, tuple(centre))
    rb = memo(key, lambda: simulate_particles(base, x0, T, dt=dt, save_every=dt))
    rp = simulate_particles(pert, x0, T, dt=dt, save_every=dt)
    ub, up = directions(rb.positions), directions(rp.positions)
    ang = angle(ub, up)
    tlaw, amax = point_mass_tstar(base.V, pert.parameters(0.0)[1],
                                  cluster_direction(x0), T, _dtheta(p))  # fmt: skip
    return {"T": T, "gamma": float((x0 @ u1).min()), "a": crit["a"], "b_norm": crit["b_norm"],
            "E_norm": crit["E_norm"], "stable": crit["stable"], "bound": crit["bound"],
            "predicted": crit["predicted"], "first_order": crit["first_order"],
            "drift": float(np.linalg.norm(ub[-1] - up[-1])),
            "base_to_u1": float(np.linalg.norm(ub[-1] - u1)),
            "pert_to_u1t": _to_axis(up[-1], crit["u1_tilde"]),
            "w2_T": w2(rb.positions[-1], rp.positions[-1]),
            "t_star": crossing_times(rb.times, -ang, -_dtheta(p))[0], "t_star_law": tlaw,
            "max_angle_law": amax}  # fmt: skip


def gap_pde_case(p: dict, case: dict, run: Run) -> dict | None:
    """The same case on the PDE (S^1: ``pde_cells`` cells; S^2: icosphere level
    ``pde_refinement``; DG0, adaptive): both flows in one :func:`solver.evolve` from the vMF
    density; cluster directions from the first moments at every step; ``W2`` at ``T``."""
    from ..mesh import sphere_mesh
    from ..run import evolve

    base, pert, U, crit, T, centre = _setup(p, case)
    d = int(case["d"])
    sm = (sphere_mesh(run.comm, 1, cells=p["pde_cells"]) if d == 2
          else sphere_mesh(run.comm, 2, refinement=p["pde_refinement"]))  # fmt: skip
    res = evolve(sm, base, VonMisesFisher(tuple(centre), p["kappa"]), T, perturbed=pert,
                 w2=True, vtx=False, progress=False, cluster_delta=None)  # fmt: skip
    if run.comm.rank != 0:
        return None
    ax = "xyz"[:d]
    mb = np.stack([res.column(f"moment_{a}") for a in ax], axis=1)
    mp = np.stack([res.column(f"moment_perturbed_{a}") for a in ax], axis=1)
    mb /= np.linalg.norm(mb, axis=1, keepdims=True)
    mp /= np.linalg.norm(mp, axis=1, keepdims=True)
    ang = angle(mb, mp)
    tlaw, _ = point_mass_tstar(base.V, pert.parameters(0.0)[1], centre, T, _dtheta(p))
    return {"T": T, "drift": float(np.linalg.norm(mb[-1] - mp[-1])),
            "base_to_u1": float(np.linalg.norm(mb[-1] - U[:, 0])),
            "pert_to_u1t": _to_axis(mp[-1], crit["u1_tilde"]),
            "w2_T": float(res.w2[-1]), "t_star": crossing_times(res.step_times, -ang,
                                                                 -_dtheta(p))[0],
            "t_star_law": tlaw, "cells": len(res.areas),
            "steps": len(res.step_times) - 1}  # fmt: skip


def gap_summary(p: dict, rows: dict) -> dict:
    """Per solver: the cases where Prop 3.3 applies (symmetric ``V``, gap > 0, stable), the
    largest ``drift / bound`` (≤ 1 means the bound holds) and ``|drift − predicted|``; the
    orthogonal threshold (drift below and above ``ε = gap``); the coupling's
    ``bound / drift``; Remark 3.4's relative error; T* over the law."""
    prows = rows["spectral_gap"]
    by = {tuple(r[k] for k in KEY): r for r in prows}
    out: dict = {"report": []}
    rep = out["report"]
    rep.append(f"Spectral gap (Prop 3.3, Remark 3.4, T*): n = {p['n']}, kappa = {p['kappa']}, "
               f"theta0 = {p['theta0_deg']} deg, A = V, tied dV; drift = |u_b(T) - u_p(T)| "
               "(chordal), bound = (2|b| + |E|)/(gap + a)")  # fmt: skip
    for solver, rs in (("particles", prows), ("pde", rows.get("pde", []))):
        if not rs:
            continue
        app = [r for r in rs if r["skew"] == 0 and r["gap"] > 0
               and by[tuple(r[k] for k in KEY)]["stable"] > 0]  # fmt: skip
        # drift <= |u1 - u1~| + (how far each flow is from its axis at T): the excess over
        # the bound after that convergence allowance, relative to the bound
        ratio = [(r["drift"] - r["base_to_u1"] - r["pert_to_u1t"])
                 / by[tuple(r[k] for k in KEY)]["bound"] for r in app
                 if by[tuple(r[k] for k in KEY)]["bound"] > 1e-12]  # fmt: skip
        err = [abs(r["drift"] - by[tuple(r[k] for k in KEY)]["predicted"]) for r in app]
        s = {"applies": len(app), "max_drift_over_bound": max(ratio, default=math.nan),
             "max_error_to_predicted": max(err, default=math.nan)}  # fmt: skip
        orth = [r for r in rs if r["kind"] == "sym" and r["phi_deg"] == 90 and r["gap"] > 0
                and r["skew"] == 0]  # fmt: skip
        s["orthogonal_below"] = max((r["drift"] for r in orth if r["eps"] < r["gap"]),
                                    default=math.nan)  # fmt: skip
        s["orthogonal_above"] = min((r["drift"] for r in orth if r["eps"] > r["gap"]),
                                    default=math.nan)  # fmt: skip
        tl = [(r["t_star"], r["t_star_law"]) for r in rs]
        q = [a / b for a, b in tl if np.isfinite(a) and np.isfinite(b) and b > 0]
        s["t_star_over_law"] = [min(q, default=math.nan), max(q, default=math.nan)]
        s["t_star_missing"] = sum(1 for a, b in tl if np.isfinite(a) != np.isfinite(b))
        out[solver] = s
        rep.append(f"  {solver}: Prop 3.3 applies in {s['applies']} cases: max (drift - "
                   "convergence)/bound "
                   f"{s['max_drift_over_bound']:.3f}, max |drift - |u1 - u1~|| "
                   f"{s['max_error_to_predicted']:.2e}; orthogonal dV: drift <= "
                   f"{s['orthogonal_below']:.2e} for eps < gap, >= {s['orthogonal_above']:.3f} "
                   f"for eps > gap; T*/law in [{s['t_star_over_law'][0]:.3f}, "
                   f"{s['t_star_over_law'][1]:.3f}], {s['t_star_missing']} cases where one of "
                   "them is missing")  # fmt: skip
    cp = [r for r in prows if r["kind"] == "coupling" and r["gap"] > 0 and r["skew"] == 0]
    if cp:
        out["coupling_bound_over_drift"] = [min(r["bound"] / r["drift"] for r in cp),
                                            max(r["bound"] / r["drift"] for r in cp)]  # fmt: skip
        rep.append("  coupling dV = eps u2 u1^T: bound/drift in "
                   f"[{out['coupling_bound_over_drift'][0]:.3f}, "
                   f"{out['coupling_bound_over_drift'][1]:.3f}] (2 as eps -> 0)")  # fmt: skip
    fo = [abs(r["drift"] - r["first_order"]) / r["drift"] for r in prows
          if np.isfinite(r["first_order"]) and r["drift"] > 1e-3 and r["stable"] > 0]  # fmt: skip
    out["remark34_max_relative_error"] = max(fo, default=math.nan)
    rep.append(f"  Remark 3.4 first-order drift: max relative error {max(fo, default=math.nan):.3f}"
               " over the stable cases with drift > 1e-3")  # fmt: skip
    return out


def plot_spectral_gap(p: dict, rows: dict, s: dict, path: Path) -> Path:
    """Left: measured drift against Prop 3.3's bound (stable cases: below the diagonal).
    Middle: drift against ε/gap for the orthogonal and the coupling adapters, with
    ``|u1 − ũ1|`` (lines). Right: T* against the point-mass law."""
    fig = figure(15, 4.6)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    pr = rows["spectral_gap"]
    for solver, mk, rs in (("particles", "o", pr), ("PDE", "s", rows.get("pde", []))):
        by = {tuple(r[k] for k in KEY): r for r in pr}
        for st, col in ((1.0, "tab:blue"), (0.0, "tab:red")):
            sel = [(by[tuple(r[k] for k in KEY)]["bound"], r["drift"]) for r in rs
                   if by[tuple(r[k] for k in KEY)]["stable"] == st and r["gap"] > 0
                   and by[tuple(r[k] for k in KEY)]["bound"] > 1e-12]  # fmt: skip
            if sel:
                b, dr = np.array(sel).T
                ax1.plot(b, np.maximum(dr, 1e-6), mk, color=col, ms=4, mfc="none"
                         if solver == "PDE" else None,
                         label=f"{solver}, {'stable' if st else 'criterion fails'}")  # fmt: skip
        for kind, phi, col in (("sym", 90.0, "tab:green"), ("coupling", 0.0, "tab:purple")):
            sel = sorted((r["eps"] / r["gap"], r["drift"], by[tuple(r[k] for k in KEY)]
                          ["predicted"]) for r in rs if r["kind"] == kind and r["phi_deg"] == phi
                         and r["gap"] > 0 and r["skew"] == 0)  # fmt: skip
            if sel:
                x, dr, _ = np.array(sel).T
                what = "orthogonal ε u2u2ᵀ" if kind == "sym" else "ε u2u1ᵀ"
                ax2.plot(x, dr, mk, color=col, ms=4, mfc="none" if solver == "PDE" else None,
                         label=f"{solver}, {what}")  # fmt: skip

        sel = [(r["t_star_law"], r["t_star"]) for r in rs]
        sel = [(a, b) for a, b in sel if np.isfinite(a) and np.isfinite(b)]
        if sel:
            a, b = np.array(sel).T
            ax3.plot(a, b, mk, ms=4, mfc="none" if solver == "PDE" else None, label=solver)
    lim = [1e-3, 1e2]
    ax1.plot(lim, lim, "k--", lw=0.8)
    ax1.set(xscale="log", yscale="log", xlabel="Prop 3.3 bound (2|b| + ‖E‖)/(gap + a) > 0",
            ylabel="measured drift |u_b(T) − u_p(T)|")  # fmt: skip
    ax1.legend(fontsize=7)
    xs = np.geomspace(0.05, 5.0, 400)
    ax2.plot(xs, np.where(xs < 1, 0.0, math.sqrt(2)), "-", color="tab:green", lw=0.8)
    ax2.plot(xs, 2 * np.sin(np.arctan(xs) / 2), "-", color="tab:purple", lw=0.8)
    ax2.axvline(1.0, color="k", lw=0.8, ls=":")
    ax2.axvline(0.5, color="tab:purple", lw=0.8, ls=":")
    ax2.set(xscale="log", xlabel="ε / gap", ylabel="drift (lines: |u1 − ũ1| exactly)")
    ax2.legend(fontsize=7)
    ax2.set_title("criterion: ε < gap (orthogonal), ε < gap/2 (ε u2u1ᵀ)", fontsize=8)
    if ax3.lines:
        lo = min(ln.get_xdata().min() for ln in ax3.lines)
        hi = max(ln.get_xdata().max() for ln in ax3.lines)
        ax3.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax3.set(xscale="log", yscale="log", xlabel="point-mass law T*", ylabel="measured T*")
    ax3.legend(fontsize=7)
    fig.suptitle(f"Spectral gap: V = U diag(1, 1−g, ...) Uᵀ = A, tied ΔV; n = {p['n']} "
                 f"particles (vMF κ = {p['kappa']:g}), PDE DG0 (S^1 {p['pde_cells']} cells, "
                 f"S^2 level {p['pde_refinement']}); δ = {p['delta']}", fontsize=9)  # fmt: skip
    return save_png(fig, path)


EXPERIMENT = Experiment(
    name="spectral_gap",
    module=__name__,
    presets=PRESETS,
    check=gap_check,
    sweeps=(Sweep("spectral_gap.csv", gap_cases, "gap_case", key=KEY, columns=tuple(COLUMNS),
                  desc="spectral gap", cost=gap_cost),
            Sweep("pde.csv", gap_pde_cases, "gap_pde_case", key=KEY,
                  columns=tuple(PDE_COLUMNS), desc="spectral gap (PDE)", mode="cases",
                  needs_run=True, cost=lambda p, c: gap_cost(p, c) * (1 if c["d"] == 2 else 20))),
    summarize=gap_summary,
    plot=lambda p, rows, s, out: plot_spectral_gap(p, rows, s, out / "spectral_gap.png"),
    needs_comm=True,
)  # fmt: skip


def run_spectral_gap(p: dict, out, *, comm=None, progress=True, budget=None):
    """Prop 3.3 / Remark 3.4 / T* with a spectral gap: ``spectral_gap.csv`` (particles),
    ``pde.csv``, ``spectral_gap.png``; the summary (``None``: stopped by the budget)."""
    return run_experiment(EXPERIMENT, p, out, comm=comm, progress=progress, budget=budget)
