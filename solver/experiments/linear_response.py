r"""Thm 4.2 of arXiv 2402.15415 by exact linear response: ``c_L`` of ``W2 ≈ c_L η_L/√L`` and its
exponent ``γ`` (``c_L ∝ L^γ``) with the adapters averaged exactly, and the most forgetful
unit adapter of rank ``r``, on particles on S^1 and S^2 (:mod:`solver.analysis._response`).

Base ``Q = K = V = I_d`` (as :mod:`.random_adapters`), ``n`` uniform tokens drawn with seed
``x0_seed + s`` (the same draws as random_adapters' seed ``s``), ``T``, RK4 step ``dt``. For each
draw the per-layer Jacobians ``J_ℓ`` of the scheme at ``max(Ls)`` layers (every ``L`` of
``Ls`` divides it; coarser layers are sums of finer ones) give

* ``c_L = √L ((Σ_a s_a²/d²) (1/n) Σ_ℓ ‖J_ℓ‖_F²)^{1/2}``: the RMS over the adapters
  ``u, v ~ N(0, I/d)`` of the first-order ``W2/η``, exact (no adapter sampling), so the only
  randomness is the draw; ``γ_s`` = least-squares slope of ``log c_L`` on ``log L`` per draw;
* the tied Jacobian ``J = Σ_ℓ J_ℓ``: the most forgetful unit (Frobenius) adapter of each rank
  in ``ranks`` (first-order ``W2`` per unit ``ε``) against a random unit rank-one adapter's RMS
  ``‖J‖_F/(d √n)`` (``E[û_i û_k] = δ_ik/d``).

The PDE's measure (``pde_seeds`` draws): the smooth density that the draw approximates
(:func:`~._common.draw_density`, as :mod:`.random_adapters`' PDE) on its mesh quadrature
(``pde_cells`` cells on S^1, icosphere level ``pde_level`` on S^2; atoms at the centroids with
the cells' masses), whose weighted per-layer Jacobians are the tangent-linear mean-field flow
in Lagrangian form (:func:`~solver.analysis.measure_tangent`): the same exact ``c_L`` and
``γ`` for the PDE (``measure.csv``).

Statistics: intervals only over the draws (the random units): percentile bootstrap of the mean
over seeds (``N_BOOT``, ``LEVEL``); the median beside it; the draws that have not clustered by
``T`` (largest particle speed ``|X[μ_T](x_i)|`` above ``speed_tol``) are named, and the mean
without them given too. An effect is "resolved" when its interval excludes 0.

The most forgetful adapter of the PDE's measure (``measure_forgetful.csv``, d, seed, L, rank):
per depth ``L`` of ``Ls`` one adapter per layer, ``ΔV^ℓ = η M_ℓ`` with ``M_ℓ`` of rank ``≤ r``
and ``Σ_ℓ ‖M_ℓ‖_F² = L Σ_a s_a²`` (the random adapters' mean budget), maximising the
first-order ``W2`` (:func:`~solver.analysis.most_forgetful_adapter` of the weighted per-layer
Jacobians): its ``W2 ≈ c^max_L η/√L`` with ``c^max_L = L (Σ_a s_a²)^{1/2} w_1``, ``w_1`` the
largest first-order ``W2`` per unit adapter (``= σ_1`` of the weighted map at full rank), beside
the random adapters' exact ``c_L`` (their RMS; ``c^max_L ≥ c_L`` when ``len(s) ≤ r``, since
``|J(M)| ≤ ‖M‖_F w_1``) and the most forgetful adapter of the particles of the same draw
(``w_1``, ``c^max_L``, and ``|⟨M^PDE, M^particles⟩_F|``, 1 for the same adapter). ``w_1`` of
the atoms is ``‖δΦ‖_{L²(μ_0)}``, which bounds the measure's first-order ``W2`` from above; on
S^1 the measure's own (``*_measure`` columns) removes the part of ``δΦ`` that the circle's
optimal coupling absorbs (:func:`~solver.analysis.circle_gradient_part`); on S^2 the bound
alone is computed.

The first-order prediction checked on the PDE itself (``forgetful_pde.csv``, cells, eps): on
S^1, draw 0, the tied (``L = 1``) full-rank most forgetful adapter ``M`` of the measure on
``check_cells[0]`` cells, and for each mesh of ``check_cells`` and ``ε`` of ``check_eps`` one
:func:`solver.evolve` (DG0) of ``V = I`` and ``V = I + ε M`` to ``T``: ``W2(μ_T, ν_T) / ε``
(the circle's exact ``W2`` of the two piecewise-constant densities, each cell split into
``SUB_ATOMS`` equal atoms) against the first-order ``W2`` of ``M`` on that mesh's quadrature
(``predicted``; the atoms' bound ``predicted_atoms`` beside it). Two meshes give the
discretisation error under one refinement.

Sweeps: ``exact.csv`` (one row per d, seed, L), ``forgetful.csv`` (d, seed, rank),
``measure.csv`` (d, seed, L: the PDE's measure), ``measure_forgetful.csv`` (d, seed, L,
rank), ``forgetful_pde.csv`` (cells, eps); figure ``linear_response.png``. Command line:
``scripts/exp_linear_response.py``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..analysis import (
    circle_gradient_part,
    first_order_w2,
    layer_jacobians,
    measure_tangent,
    mesh_atoms,
    most_forgetful_adapter,
    random_adapter_c,
)
from ..model import Uniform
from ..particles import sample_particles
from ..velocity import attention_velocity
from ._common import draw_density, identity_model
from ._experiment import Experiment, Sweep, run_experiment
from ._figures import figure, save_png
from ._params import positive, require
from ._stats import bootstrap, nanmedian
from ._sweep import as_columns

__all__ = ["PRESETS", "EXPERIMENT", "run_linear_response", "exact_case", "forgetful_case",
           "measure_case", "measure_forgetful_case", "forgetful_pde_case", "response_summary",
           "plot_linear_response"]  # fmt: skip

PRESETS = {
    "tiny": {"dims": [2], "n": 32, "x0_seed": 0, "T": 6.0, "dt": 0.05, "Ls": [1, 4, 16],
             "seeds": 8, "s": [1.0], "ranks": [1, 2], "speed_tol": 0.01, "pde_seeds": 4,
             "pde_cells": 32, "pde_level": 1, "check_cells": [128, 256], "check_eps": [0.01]},
    "small": {"dims": [2, 3], "n": 32, "x0_seed": 0, "T": 10.0, "dt": 0.05, "Ls": [1, 8, 64],
              "seeds": 24, "s": [1.0], "ranks": [1, 2], "speed_tol": 0.01, "pde_seeds": 8,
              "pde_cells": 64, "pde_level": 1, "check_cells": [256, 512],
              "check_eps": [0.02, 0.01]},
    "paper": {"dims": [2, 3], "n": 32, "x0_seed": 0, "T": 10.0, "dt": 0.05,
              "Ls": [1, 4, 16, 64], "seeds": 96, "s": [1.0], "ranks": [1, 2, 3],
              "speed_tol": 0.01, "pde_seeds": 24, "pde_cells": 128, "pde_level": 1,
              "check_cells": [512, 1024], "check_eps": [0.02, 0.01]},
}  # fmt: skip

EXACT_COLUMNS = ["c", "max_speed_T"]
FORGETFUL_COLUMNS = ["w2", "random_rank1", "sigma1"]
MEASURE_FORGETFUL_COLUMNS = ["w2", "sigma1", "c_max", "c_random", "w2_measure", "c_max_measure",
                             "c_random_measure", "particles_w2", "particles_c_max",
                             "particles_c_random", "alignment", "alignment_measure"]  # fmt: skip
FORGETFUL_PDE_COLUMNS = ["w2_over_eps", "predicted", "predicted_atoms", "sigma1"]
#: atoms per cell of the DG0 densities in ``forgetful_pde.csv``'s ``W2`` (a shift ``s`` below a
#: cell would read ``√(s h)`` with one atom per cell: :func:`~solver.analysis.pde_response`)
SUB_ATOMS = 32
N_BOOT, LEVEL = 2000, 0.9


def response_check(p: dict) -> None:
    positive(p, "n", "T", "dt", "Ls", "seeds", "ranks", "speed_tol", "pde_seeds", "pde_cells",
             "pde_level", "check_cells", "check_eps")  # fmt: skip
    require(p, "check_cells", len(p["check_cells"]) >= 1 and min(p["check_cells"]) >= 3,
            "a list of S^1 cell counts >= 3")  # fmt: skip
    require(p, "dims", all(d >= 2 for d in p["dims"]), "a list of dimensions >= 2")
    Lm = max(p["Ls"])
    require(p, "Ls", all(Lm % L == 0 for L in p["Ls"]), f"depths dividing max(Ls) = {Lm}")


_CACHE: dict = {}


def _response(p: dict, d: int, seed: int) -> dict:
    """Draw ``seed``'s exact response (cached per process, small: per ``L`` of ``Ls`` its
    ``c_L``, the tied Jacobian and the largest speed at ``T``): one computation of the
    per-layer Jacobians at ``max(Ls)`` layers serves both sweeps."""
    Lm = max(p["Ls"])
    key = (d, p["n"], p["x0_seed"] + seed, p["T"], p["dt"], Lm, tuple(p["Ls"]), tuple(p["s"]))
    if key not in _CACHE:
        x0 = sample_particles(Uniform(), p["n"], d, seed=p["x0_seed"] + seed)
        x, J = layer_jacobians(identity_model(d), x0, p["T"], Lm, dt=p["dt"])
        c = {L: random_adapter_c(J.reshape(L, Lm // L, *J.shape[1:]).sum(axis=1), p["s"])
             for L in p["Ls"]}  # fmt: skip
        w = np.full(len(x), 1.0 / len(x))
        v = attention_velocity(x, x, w, np.eye(d), np.eye(d))
        _CACHE[key] = {"c": c, "tied": J.sum(axis=0), "J": J,
                       "speed": float(np.linalg.norm(v, axis=1).max())}  # fmt: skip
    return _CACHE[key]


def _measure_response(p: dict, d: int, seed: int) -> dict:
    """``c_L`` of the PDE's measure for draw ``seed`` (module doc; cached per process)."""
    from mpi4py import MPI

    from ..mesh import sphere_mesh

    Lm = max(p["Ls"])
    mesh = {"cells": p["pde_cells"]} if d == 2 else {"refinement": p["pde_level"]}
    key = ("measure", d, p["n"], p["x0_seed"] + seed, p["T"], p["dt"], Lm, tuple(p["Ls"]),
           tuple(p["s"]), tuple(mesh.items()))  # fmt: skip
    if key not in _CACHE:
        x0 = sample_particles(Uniform(), p["n"], d, seed=p["x0_seed"] + seed)
        init = draw_density(x0, f"seed {seed}")
        atoms, w = mesh_atoms(sphere_mesh(MPI.COMM_SELF, d - 1, **mesh), init)
        x, J = layer_jacobians(identity_model(d), atoms, p["T"], Lm, dt=p["dt"], weights=w)
        c = {L: random_adapter_c(_coarse(J, L), p["s"], weights=w) for L in p["Ls"]}
        _CACHE[key] = {"c": c, "J": J, "x": x, "w": w}
    return _CACHE[key]


def _coarse(J: np.ndarray, L: int) -> np.ndarray:
    """Per-layer Jacobians of ``L`` layers from those of a finer partition (their sums)."""
    return J.reshape(L, len(J) // L, *J.shape[1:]).sum(axis=1)


def measure_cases(p: dict) -> list[dict]:
    return [{"d": d, "seed": s, "L": L} for d in p["dims"] for s in range(p["pde_seeds"])
            for L in p["Ls"]]  # fmt: skip


def measure_case(p: dict, case: dict) -> dict:
    """``c_L`` of the PDE's measure of one draw and depth (module doc)."""
    return {"c": _measure_response(p, int(case["d"]), int(case["seed"]))["c"][case["L"]]}


def measure_forgetful_cases(p: dict) -> list[dict]:
    return [{"d": d, "seed": s, "L": L, "rank": r} for d in p["dims"]
            for s in range(p["pde_seeds"]) for L in p["Ls"] for r in p["ranks"]
            if r <= d]  # fmt: skip


def measure_forgetful_case(p: dict, case: dict) -> dict:
    """The most forgetful per-layer adapter of rank ``r`` at depth ``L`` for the PDE's measure
    of one draw, beside the random adapters' ``c_L`` and the particles' of the same draw (module
    doc: ``w2`` per unit adapter, ``c_max = L (Σ s²)^{1/2} w2``)."""
    d, seed, L, r = int(case["d"]), int(case["seed"]), int(case["L"]), int(case["rank"])
    pm, pp = _measure_response(p, d, seed), _response(p, d, seed)
    scale = L * math.sqrt(float(np.sum(np.asarray(p["s"], dtype=float) ** 2)))
    J, w = _coarse(pm["J"], L), pm["w"]
    fa = most_forgetful_adapter(J, r, weights=w)
    Jp = _coarse(pp["J"], L)
    fp = most_forgetful_adapter(Jp, r)
    nan = float("nan")
    row = {"w2": fa.w2, "sigma1": float(fa.sigma[0] / math.sqrt(len(w))), "c_max": scale * fa.w2,
           "c_random": pm["c"][L], "w2_measure": nan, "c_max_measure": nan,
           "c_random_measure": nan, "particles_w2": fp.w2, "particles_c_max": scale * fp.w2,
           "particles_c_random": pp["c"][L], "alignment": abs(float(np.sum(fa.dV * fp.dV))),
           "alignment_measure": nan}  # fmt: skip
    if d == 2:
        Jm = circle_gradient_part(pm["x"], J, w)
        fm = most_forgetful_adapter(Jm, r, weights=w)
        row.update(w2_measure=fm.w2, c_max_measure=scale * fm.w2,
                   c_random_measure=random_adapter_c(Jm, p["s"], weights=w),
                   alignment_measure=abs(float(np.sum(fm.dV * fp.dV))))  # fmt: skip
    return row


def forgetful_pde_cases(p: dict) -> list[dict]:
    if 2 not in p["dims"]:
        return []
    return [{"cells": int(c), "eps": float(e)} for c in p["check_cells"] for e in p["check_eps"]]


def _check_setup(p: dict):
    """Draw 0's density on S^1 and its tied full-rank most forgetful adapter of the measure on
    ``check_cells[0]`` cells (cached)."""
    from mpi4py import MPI

    from ..mesh import sphere_mesh

    key = ("check", p["n"], p["x0_seed"], p["T"], p["dt"], p["check_cells"][0])
    if key not in _CACHE:
        init = draw_density(sample_particles(Uniform(), p["n"], 2, seed=p["x0_seed"]), "seed 0")
        sm = sphere_mesh(MPI.COMM_SELF, 1, cells=int(p["check_cells"][0]))
        E = np.eye(4).reshape(4, 2, 2)
        r = measure_tangent(sm, identity_model(2), init, p["T"], E, dt=p["dt"])
        f = most_forgetful_adapter(circle_gradient_part(r.x, r.dx, r.weights), 2,
                                   weights=r.weights)  # fmt: skip
        _CACHE[key] = (init, f)
    return _CACHE[key]


def circle_density_w2(theta: np.ndarray, a: np.ndarray, b: np.ndarray, k: int = SUB_ATOMS):
    """The circle's ``W2`` between two piecewise-constant densities on equal cells centred at
    the angles ``theta`` with masses ``a`` and ``b``, each cell split into ``k`` equal atoms
    (error ``O(h/k)``)."""
    from ..analysis import wasserstein_circle

    h = 2 * np.pi / len(theta)
    t = (theta[:, None] + ((np.arange(k) + 0.5) / k - 0.5) * h).ravel()
    return wasserstein_circle(t, np.repeat(a, k), t, np.repeat(b, k))


def forgetful_pde_case(p: dict, case: dict) -> dict:
    """One DG0 run of ``V = I`` and ``V = I + ε M`` (``M``: :func:`_check_setup`) on ``cells``
    cells to ``T``: ``W2(μ_T, ν_T)/ε`` against ``M``'s first-order ``W2`` on that mesh (module
    doc)."""
    from mpi4py import MPI

    from ..mesh import sphere_mesh
    from ..model import TiedLoRA
    from ..run import evolve

    init, f = _check_setup(p)
    sm = sphere_mesh(MPI.COMM_SELF, 1, cells=int(case["cells"]))
    base = identity_model(2)
    key = ("check-prediction", p["n"], p["x0_seed"], p["T"], p["dt"], p["check_cells"][0],
           int(case["cells"]))  # fmt: skip
    if key not in _CACHE:
        r = measure_tangent(sm, base, init, p["T"], f.dV, dt=p["dt"])
        pred = first_order_w2(circle_gradient_part(r.x, r.dx, r.weights), r.weights)[0]
        _CACHE[key] = (float(pred), float(r.w2[0]))
    pred, atoms = _CACHE[key]
    eps = float(case["eps"])
    res = evolve(sm, base, init, p["T"], perturbed=base.perturbed(TiedLoRA(np.zeros((2, 2)),
                 eps * f.dV)), w2=False, vtx=False, progress=False,
                 cluster_delta=None)  # fmt: skip
    areas = np.ptp(res.areas) <= 1e-9 * res.areas.mean()
    if not areas:
        raise ValueError("forgetful_pde: the S^1 mesh's cells must be equal")
    th = np.arctan2(res.centroids[:, 1], res.centroids[:, 0])
    m = res.areas
    W = circle_density_w2(th, res.density[-1] * m, res.density_perturbed[-1] * m)
    return {"w2_over_eps": W / eps, "predicted": pred, "predicted_atoms": atoms, "sigma1": f.w2}


def exact_cases(p: dict) -> list[dict]:
    return [{"d": d, "seed": s, "L": L} for d in p["dims"] for s in range(p["seeds"])
            for L in p["Ls"]]  # fmt: skip


def forgetful_cases(p: dict) -> list[dict]:
    return [{"d": d, "seed": s, "rank": r} for d in p["dims"] for s in range(p["seeds"])
            for r in p["ranks"] if r <= d]  # fmt: skip


def exact_case(p: dict, case: dict) -> dict:
    """``c_L`` of one draw and depth (module doc) and the draw's largest speed at ``T``."""
    r = _response(p, int(case["d"]), int(case["seed"]))
    return {"c": r["c"][case["L"]], "max_speed_T": r["speed"]}


def forgetful_case(p: dict, case: dict) -> dict:
    """The most forgetful unit adapter of rank ``r`` for a tied ``ΔV`` (first-order ``W2`` per
    unit ``ε``), a random unit rank-one adapter's RMS, and ``σ_1/√n``."""
    d = int(case["d"])
    Jt = _response(p, d, int(case["seed"]))["tied"]
    f = most_forgetful_adapter(Jt, int(case["rank"]))
    n = Jt.shape[1]
    return {"w2": f.w2, "random_rank1": float(np.sqrt(np.sum(Jt**2) / n) / d),
            "sigma1": float(f.sigma[0] / math.sqrt(n))}  # fmt: skip


def _mean_interval(x: np.ndarray) -> tuple[float, float, float]:
    return bootstrap(lambda idx: float(np.mean(x[idx])), len(x), n_boot=N_BOOT, level=LEVEL)


def response_summary(p: dict, rows: dict) -> dict:
    """Per d: per-draw ``γ_s``, their mean with a bootstrap interval over the draws, the median,
    ``c_{Lmax}/c_{Lmin}``, the draws not clustered by ``T`` and the mean without them; per
    (d, rank): the most forgetful adapter over the random one (mean and interval)."""
    out: dict = {"gamma": {}, "forgetful": {}}
    rep = [f"Exact linear response (n = {p['n']}, T = {p['T']}, dt = {p['dt']}, Ls = "
           f"{p['Ls']}, {p['seeds']} draws; adapters averaged exactly; "
           f"{100 * LEVEL:g}% intervals: bootstrap over the draws)"]  # fmt: skip
    Ls = np.array(sorted(p["Ls"]), float)
    for d in p["dims"]:
        sel = [r for r in rows["exact"] if r["d"] == d]
        seeds = sorted({int(r["seed"]) for r in sel})
        tab = {(int(r["seed"]), r["L"]): r for r in sel}
        c = np.array([[tab[(s, L)]["c"] for L in Ls] for s in seeds])
        g = np.array([np.polyfit(np.log(Ls), np.log(ci), 1)[0] for ci in c])
        ratio = c[:, -1] / c[:, 0]
        speed = np.array([tab[(s, Ls[0])]["max_speed_T"] for s in seeds])
        moving = [s for s, v in zip(seeds, speed, strict=True) if v > p["speed_tol"]]
        m, lo, hi = _mean_interval(g)
        f = {"gamma_mean": m, "gamma_lo": lo, "gamma_hi": hi, "gamma_median": nanmedian(g),
             "resolved": bool(lo > 0 or hi < 0), "ratio_mean": float(ratio.mean()),
             "ratio_min": float(ratio.min()), "ratio_max": float(ratio.max()),
             "not_clustered": moving, "c_mean": c.mean(axis=0).tolist(), "Ls": Ls.tolist(),
             "gamma_per_draw": g.tolist()}  # fmt: skip
        keep = np.array([s not in moving for s in seeds])
        if moving and keep.sum() >= 2:
            f["gamma_clustered"] = list(_mean_interval(g[keep]))
        out["gamma"][str(d)] = f
        pde, pde_line = [r for r in rows.get("measure", []) if r["d"] == d], None
        if pde:
            ptab = {(int(r["seed"]), r["L"]): r["c"] for r in pde}
            pseeds = sorted({int(r["seed"]) for r in pde})
            pc = np.array([[ptab[(sd, L)] for L in Ls] for sd in pseeds])
            pg = np.array([np.polyfit(np.log(Ls), np.log(ci), 1)[0] for ci in pc])
            pm, plo, phi = _mean_interval(pg)
            f["pde"] = {"gamma_mean": pm, "gamma_lo": plo, "gamma_hi": phi,
                        "resolved": bool(plo > 0 or phi < 0), "c_mean": pc.mean(axis=0).tolist(),
                        "ratio_mean": float((pc[:, -1] / pc[:, 0]).mean()),
                        "gamma_per_draw": pg.tolist()}  # fmt: skip
            mesh = f"{p['pde_cells']} cells" if d == 2 else f"icosphere level {p['pde_level']}"
            ok = "resolved" if f["pde"]["resolved"] else "not resolved"
            pde_line = (
                f"    the PDE's measure ({mesh}, {len(pseeds)} draws, tangent-linear "
                f"mean-field flow): gamma = {pm:.4f} [{plo:.4f}, {phi:.4f}] ({ok}), "
                f"c_{int(Ls[-1])}/c_{int(Ls[0])} = {f['pde']['ratio_mean']:.4f}"
            )
        rep.append(f"  d = {d}: gamma = {m:.4f} [{lo:.4f}, {hi:.4f}] (median "
                   f"{f['gamma_median']:.4f}; "
                   f"{'resolved' if f['resolved'] else 'not resolved'}), c_{int(Ls[-1])}/"
                   f"c_{int(Ls[0])} = {f['ratio_mean']:.4f} (draws {f['ratio_min']:.4f}.."
                   f"{f['ratio_max']:.4f}); not clustered by T (speed > {p['speed_tol']}): "
                   f"{moving if moving else 'none'}"
                   + (f"; without them gamma = {f['gamma_clustered'][0]:.4f} "
                      f"[{f['gamma_clustered'][1]:.4f}, {f['gamma_clustered'][2]:.4f}]"
                      if "gamma_clustered" in f else ""))  # fmt: skip
        if pde_line:
            rep.append(pde_line)
        for r in p["ranks"]:
            fs = [x for x in rows["forgetful"] if x["d"] == d and x["rank"] == r]
            if not fs:
                continue
            q = np.array([x["w2"] / x["random_rank1"] for x in fs])
            qm, qlo, qhi = _mean_interval(q)
            out["forgetful"][f"{d},{r}"] = {
                "mean": qm,
                "lo": qlo,
                "hi": qhi,
                "w2_mean": float(np.mean([x["w2"] for x in fs])),
            }
            rep.append(
                f"    most forgetful unit adapter of rank {r}: first-order W2 / that of "
                f"a random unit rank-1 adapter (RMS) = {qm:.3f} [{qlo:.3f}, {qhi:.3f}]"
            )
    _forgetful_measure_summary(p, rows, out, rep)
    out["report"] = rep
    return out


def _forgetful_measure_summary(p: dict, rows: dict, out: dict, rep: list) -> None:
    """``out["measure_forgetful"]["d,rank,L"]``: means over the draws (intervals: bootstrap
    over the draws) of ``c^max_L / c_L`` for the PDE's measure (atoms; on S^1 also the
    measure's own), for the particles, of the PDE's over the particles' ``c^max_L`` and of the
    adapters' alignment; ``out["forgetful_pde"]``: per mesh the PDE's ``W2/ε`` per ε against
    the first-order prediction, and the change under one refinement."""
    mf, res = rows.get("measure_forgetful", []), {}
    if mf:
        rep.append("  most forgetful per-layer adapter of the PDE's measure (sum of squared "
                   "norms = the random adapters' mean budget): c^max_L / c_L")  # fmt: skip
    for d in p["dims"]:
        for r in p["ranks"]:
            for L in sorted(p["Ls"]):
                sel = [x for x in mf if x["d"] == d and x["rank"] == r and x["L"] == L]
                if not sel:
                    continue
                c = as_columns(sel)
                f = {"draws": len(sel), "c_max": float(c["c_max"].mean()),
                     "c_random": float(c["c_random"].mean()),
                     "particles_c_max": float(c["particles_c_max"].mean()),
                     "alignment": float(c["alignment"].mean())}  # fmt: skip
                parts = {"atoms": c["c_max"] / c["c_random"],
                         "particles": c["particles_c_max"] / c["particles_c_random"],
                         "pde_over_particles": c["c_max"] / c["particles_c_max"]}  # fmt: skip
                if np.all(np.isfinite(c["c_max_measure"])):
                    parts["measure"] = c["c_max_measure"] / c["c_random_measure"]
                    parts["measure_over_atoms"] = c["c_max_measure"] / c["c_max"]
                    f["c_max_measure"] = float(c["c_max_measure"].mean())
                    f["alignment_measure"] = float(c["alignment_measure"].mean())
                for k, v in parts.items():
                    f[k] = list(_mean_interval(np.asarray(v, float)))
                res[f"{d},{r},{L}"] = f
                line = (f"    d = {d}, rank {r}, L = {L}: PDE atoms {f['atoms'][0]:.3f} "
                        f"[{f['atoms'][1]:.3f}, {f['atoms'][2]:.3f}]")  # fmt: skip
                if "measure" in f:
                    line += (f", the measure's (S^1) {f['measure'][0]:.3f} [{f['measure'][1]:.3f}"
                             f", {f['measure'][2]:.3f}] (its c^max / the atoms' "
                             f"{f['measure_over_atoms'][0]:.3f})")  # fmt: skip
                line += (f"; particles {f['particles'][0]:.3f} [{f['particles'][1]:.3f}, "
                         f"{f['particles'][2]:.3f}]; c^max PDE / particles "
                         f"{f['pde_over_particles'][0]:.3f}; |<M_PDE, M_particles>| "
                         f"{f['alignment']:.3f}")  # fmt: skip
                rep.append(line)
    out["measure_forgetful"] = res
    ck = rows.get("forgetful_pde", [])
    if not ck:
        return
    c = as_columns(ck)
    cells, eps = sorted({int(n) for n in c["cells"]}), sorted(set(c["eps"].tolist()))
    tab = {(int(r["cells"]), r["eps"]): r for r in ck}
    chk = {"cells": cells, "eps": eps, "sigma1": float(c["sigma1"][0]),
           "w2_over_eps": [[tab[(n, e)]["w2_over_eps"] for e in eps] for n in cells],
           "predicted": [tab[(n, eps[0])]["predicted"] for n in cells],
           "predicted_atoms": [tab[(n, eps[0])]["predicted_atoms"] for n in cells]}  # fmt: skip
    out["forgetful_pde"] = chk
    rep.append(f"  the tied full-rank most forgetful adapter of the measure (S^1, draw 0, "
               f"sigma_1 = {chk['sigma1']:.4f} on {cells[0]} cells) on the PDE (DG0), "
               f"W2(mu_T, nu_T)/eps at eps = {eps}:")  # fmt: skip
    for k, n in enumerate(cells):
        w = chk["w2_over_eps"][k]
        rep.append(f"    {n} cells: " + ", ".join(f"{v:.4f}" for v in w)
                   + f"; first-order prediction {chk['predicted'][k]:.4f} (ratio "
                   f"{w[0] / chk['predicted'][k]:.4f} at eps = {eps[0]}); the atoms' bound "
                   f"{chk['predicted_atoms'][k]:.4f}")  # fmt: skip
    if len(cells) > 1:
        rep.append(f"    under one refinement ({cells[-2]} -> {cells[-1]} cells): W2/eps moves "
                   f"by {chk['w2_over_eps'][-1][0] - chk['w2_over_eps'][-2][0]:+.4f}, the "
                   f"prediction by {chk['predicted'][-1] - chk['predicted'][-2]:+.4f}")  # fmt: skip


def plot_linear_response(p: dict, rows: dict, s: dict, path: Path) -> Path:
    """Left: ``c_L`` against ``L`` per draw (thin) and the mean (thick). Right: the per-draw
    ``γ_s`` (points, draws not clustered by ``T`` in red) with the mean and its interval."""
    extra = bool(rows.get("measure_forgetful")) or bool(rows.get("forgetful_pde"))
    fig = figure(11, 8.8 if extra else 4.4)
    axs = fig.subplots(2 if extra else 1, 2)
    ax1, ax2 = axs[0] if extra else axs
    for k, (d, f) in enumerate(s["gamma"].items()):
        Ls = np.array(f["Ls"])
        sel = [r for r in rows["exact"] if str(r["d"]) == d]
        for seed in sorted({r["seed"] for r in sel}):
            c = [next(r["c"] for r in sel if r["seed"] == seed and r["L"] == L) for L in Ls]
            ax1.plot(Ls, c, "-", lw=0.4, color=f"C{k}", alpha=0.5)
        ax1.plot(Ls, f["c_mean"], "o-", lw=2, color=f"C{k}", label=f"d = {d}: mean over draws")
        if "pde" in f:
            ax1.plot(Ls, f["pde"]["c_mean"], "s--", lw=1.5, color=f"C{k}",
                     label=f"d = {d}: the PDE's measure (mean)")  # fmt: skip
        g = np.array(f["gamma_per_draw"])
        seeds = sorted({int(r["seed"]) for r in sel})
        col = ["tab:red" if sd in f["not_clustered"] else f"C{k}" for sd in seeds]
        ax2.scatter(np.full(len(g), k) + np.linspace(-0.2, 0.2, len(g)), g, s=8, c=col)
        ax2.errorbar([k + 0.35], [f["gamma_mean"]], yerr=[[f["gamma_mean"] - f["gamma_lo"]],
                     [f["gamma_hi"] - f["gamma_mean"]]], fmt="ks", capsize=4)  # fmt: skip
    ax1.set(
        xscale="log",
        yscale="log",
        xlabel="depth L (layers)",
        ylabel="exact c_L (RMS over adapters)",
    )
    ax1.legend(fontsize=7)
    ax2.axhline(0, color="k", lw=0.8, ls=":")
    ax2.set_xticks(range(len(s["gamma"])), [f"d = {d}" for d in s["gamma"]])
    ax2.set_ylabel("γ per draw (c_L ∝ L^γ)")
    ax2.set_title(f"mean and {100 * LEVEL:g}% bootstrap interval over draws; red: not "
                  "clustered by T", fontsize=8)  # fmt: skip
    if extra:
        _plot_forgetful(p, rows, s, *axs[1])
    fig.suptitle(
        f"Thm 4.2 by exact linear response: n = {p['n']} uniform tokens, T = "
        f"{p['T']:g}, RK4 dt = {p['dt']:g}, {p['seeds']} draws",
        fontsize=9,
    )
    return save_png(fig, path)


def _plot_forgetful(p: dict, rows: dict, s: dict, ax3, ax4) -> None:
    """Left: ``c^max_L`` of the most forgetful rank-``min(ranks)`` adapter (mean over the
    draws) against ``L``: the PDE's measure (atoms; S^1 also the measure's own) and the
    particles, with the random adapters' ``c_L`` of the PDE's measure. Right: the check on the
    PDE, ``W2(μ_T, ν_T)/ε`` against ``ε`` per mesh, with the first-order predictions."""
    r = min(p["ranks"])
    for k, d in enumerate(p["dims"]):
        keys = [(L, s["measure_forgetful"].get(f"{d},{r},{L}")) for L in sorted(p["Ls"])]
        keys = [(L, f) for L, f in keys if f]
        if not keys:
            continue
        Ls = [L for L, _ in keys]
        ax3.plot(Ls, [f["c_max"] for _, f in keys], "s-", color=f"C{k}",
                 label=f"d = {d}: PDE's measure, atoms (bound)")  # fmt: skip
        if "c_max_measure" in keys[0][1]:
            ax3.plot(Ls, [f["c_max_measure"] for _, f in keys], "^-", color=f"C{k}",
                     label=f"d = {d}: PDE's measure (its own W2)")  # fmt: skip
        ax3.plot(Ls, [f["particles_c_max"] for _, f in keys], "o--", color=f"C{k}",
                 label=f"d = {d}: particles (n = {p['n']})")  # fmt: skip
        ax3.plot(Ls, [f["c_random"] for _, f in keys], ":", color=f"C{k}", lw=1.5,
                 label=f"d = {d}: random adapters' c_L (PDE, atoms)")  # fmt: skip
    ax3.set(xscale="log", yscale="log", xlabel="depth L (layers)",
            ylabel=f"c^max_L, most forgetful rank-{r} adapter")  # fmt: skip
    ax3.set_title(f"mean over {p['pde_seeds']} draws; budget Σ‖M_ℓ‖² = L Σ s²", fontsize=8)
    ax3.legend(fontsize=6)
    chk = s.get("forgetful_pde")
    if not chk:
        ax4.set_axis_off()
        return
    for k, n in enumerate(chk["cells"]):
        ax4.plot(chk["eps"], chk["w2_over_eps"][k], "o-", color=f"C{k}",
                 label=f"DG0, {n} cells: W2(μ_T, ν_T)/ε")  # fmt: skip
        ax4.axhline(chk["predicted"][k], color=f"C{k}", ls="--", lw=1,
                    label=f"first order, {n} cells: {chk['predicted'][k]:.4f}")  # fmt: skip
    ax4.set(xscale="log", xlabel="ε", ylabel="W2 / ε")
    ax4.set_title(f"S^1, draw 0, T = {p['T']:g}: tied full-rank most forgetful adapter of "
                  f"the measure (σ_1 = {chk['sigma1']:.3f})", fontsize=8)  # fmt: skip
    ax4.legend(fontsize=6)


EXPERIMENT = Experiment(
    name="linear_response",
    module=__name__,
    presets=PRESETS,
    check=response_check,
    sweeps=(Sweep("exact.csv", exact_cases, "exact_case", key=("d", "seed", "L"),
                  columns=tuple(EXACT_COLUMNS), desc="exact c_L"),
            Sweep("forgetful.csv", forgetful_cases, "forgetful_case", key=("d", "seed", "rank"),
                  columns=tuple(FORGETFUL_COLUMNS), desc="most forgetful adapters"),
            Sweep("measure.csv", measure_cases, "measure_case", key=("d", "seed", "L"),
                  columns=("c",), desc="c_L of the PDE's measure"),
            Sweep("measure_forgetful.csv", measure_forgetful_cases, "measure_forgetful_case",
                  key=("d", "seed", "L", "rank"), columns=tuple(MEASURE_FORGETFUL_COLUMNS),
                  desc="most forgetful adapters of the PDE's measure"),
            Sweep("forgetful_pde.csv", forgetful_pde_cases, "forgetful_pde_case",
                  key=("cells", "eps"), columns=tuple(FORGETFUL_PDE_COLUMNS),
                  desc="the most forgetful adapter on the PDE")),
    summarize=response_summary,
    plot=lambda p, rows, s, out: plot_linear_response(p, rows, s, out / "linear_response.png"),
)  # fmt: skip


def run_linear_response(p: dict, out, *, comm=None, progress=True, budget=None):
    """``exact.csv``, ``forgetful.csv``, ``measure.csv``, ``measure_forgetful.csv``,
    ``forgetful_pde.csv``, ``linear_response.png``; the summary (``None``: stopped by the
    budget)."""
    return run_experiment(EXPERIMENT, p, out, comm=comm, progress=progress, budget=budget)
