"""Why the S² phase boundary's exit (PDE, ``atoms_w2``) disagrees with the particles'.

Issue #25 item 3. The δ-cluster state reads ``W₂(ν_t, P(C)) < δ`` (``C``: the base flow's
cluster centres). With one atom ``c`` it splits exactly into the centre separation and the
spread, ``W₂² = |x̄ − c|² + s²`` (``x̄ = Σ w y / Σ w`` the Euclidean mean of the measure on the
unit sphere, ``s² = Σ w |y − x̄|² / Σ w``), and the separation into the angle ``θ`` between
``x̄/|x̄|`` and ``c`` and the depth ``|x̄| = (1 − s²)^{1/2}``:
``|x̄ − c|² = 1 + |x̄|² − 2|x̄| cos θ``. This script records, at every saved time, for both
flows (ν perturbed, μ base): ``θ``, ``s``, ``W₂`` (and the angle of ``c`` from the axis ``m``
of ρ0), for the PDE (DG0 as the phase diagram runs it, icosphere level ``L``, the cell masses
at the centroids projected to the sphere, ``c`` = μ_t's heaviest basin's centre as in
:class:`solver.run.ClusterState`) and for the particles (``conv_draw = "quantile"``, ``c`` the
final base configuration's heaviest cluster as in :func:`phase_particles_case`), and the times
at which the flows cross ``δ``.

    python scripts/diag_s2_exit.py pde 4 --save 0.25 --out /tmp/pde4.npz
    python scripts/diag_s2_exit.py particles 2000 --out /tmp/part2000.npz
    python scripts/diag_s2_exit.py compare /tmp/pde3.npz /tmp/pde4.npz ... --ref /tmp/part.npz

Rank 0 writes and prints; each run prints wall and CPU time (``time.process_time``) and the
load (``os.getloadavg``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np

from solver.analysis import crossing_times, density_clusters, find_clusters
from solver.experiments import load_presets
from solver.experiments._common import e2_perturbation, identity_model
from solver.experiments.phase_diagram import (
    ATOM_MIN_MASS,
    conv_points,
    phase_eps,
    phase_pde_initial,
)
from solver.model import Uniform
from solver.particles import sample_particles, simulate_particles


def small_case(eps_lo: float = 0.046, eps_hi: float = 0.047) -> tuple[dict, float]:
    """The ``small`` preset with its S² ε in ``[eps_lo, eps_hi]`` (0.0464: issue #25)."""
    p = load_presets("phase_diagram")["small"]
    (eps,) = [e for e in phase_eps(p) if eps_lo < e < eps_hi]
    return p, eps


def split_w2(y: np.ndarray, w: np.ndarray, c: np.ndarray) -> dict:
    """``θ`` (angle of the mean direction from ``c``), ``s`` (spread about the Euclidean mean),
    ``r = |x̄ − c|`` and ``W₂ = (Σ w |y − c|² / Σ w)^{1/2}`` of the weights ``w`` at the unit
    vectors ``y`` (n, 3) against one atom ``c``; ``W₂² = r² + s²`` exactly (a check, returned
    as ``w2``, computed directly)."""
    w = w / w.sum()
    xbar = w @ y
    s2 = max(0.0, float(w @ np.sum((y - xbar) ** 2, axis=1)))
    u = xbar / np.linalg.norm(xbar)
    theta = math.atan2(np.linalg.norm(np.cross(u, c)), float(u @ c))
    r = float(np.linalg.norm(xbar - c))
    w2 = math.sqrt(float(w @ np.sum((y - c) ** 2, axis=1)))
    return {"theta": theta, "s": math.sqrt(s2), "r": r, "w2": w2, "mean": xbar}


def _record(times, flows, c_of, axis) -> dict:
    """Per saved time: ``theta_*``, ``s_*``, ``r_*``, ``w2_*`` for ``nu`` and ``mu``, the
    atom's angle from ``axis``, the mean directions ``u_*`` and the atom ``c`` (vectors);
    ``flows`` = {name: (points (nt, n, 3), weights (nt, n))}."""
    out = {k: [] for k in ("theta_nu", "s_nu", "r_nu", "w2_nu", "theta_mu", "s_mu", "r_mu",
                           "w2_mu", "c_axis", "sep", "u_nu", "u_mu", "c")}  # fmt: skip
    for i in range(len(times)):
        c = c_of(i)
        means = {}
        for name, (y, w) in flows.items():
            d = split_w2(y[i], w[i], c)
            for k in ("theta", "s", "r", "w2"):
                out[f"{k}_{name}"].append(d[k])
            means[name] = d["mean"] / np.linalg.norm(d["mean"])
        out["c_axis"].append(math.acos(min(1.0, float(c @ axis))))
        out["u_nu"].append(means["nu"])
        out["u_mu"].append(means["mu"])
        out["c"].append(c)
        out["sep"].append(float(np.linalg.norm(means["nu"] - means["mu"])))
    return {k: np.array(v) for k, v in out.items()}


def rotation(angle: float) -> np.ndarray:
    """The rotation by ``angle`` about ``(1, 1, 1)/√3``: the whole problem (ρ0 and ``dV``)
    turned by it is the same problem on a mesh turned the other way, so what changes is only
    where the clusters sit relative to the cells."""
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(angle * np.ones(3) / np.sqrt(3)).as_matrix()


def run_pde(level: int, save: float, T: float, active: float | None, angle: float = 0.0) -> dict:
    """ν and μ of the phase diagram's S² case on icosphere level ``level`` (DG0, the
    ``small`` preset's ``pde_tol`` and tail), saved every ``save``, to ``T``; the problem
    turned by :func:`rotation` ``(angle)`` (vectors recorded in the mesh's frame)."""
    from mpi4py import MPI

    from solver.mesh import sphere_mesh
    from solver.run import ClusterState, evolve

    p, eps = small_case()
    comm = MPI.COMM_WORLD
    sm = sphere_mesh(comm, 2, refinement=level)
    base = identity_model(3)
    Rm = rotation(angle)
    f0, dV = phase_pde_initial(p, 3), e2_perturbation(3, eps)
    dV = type(dV)(dV.dA, Rm @ dV.dV @ Rm.T)
    res = evolve(sm, base, lambda x: f0(x @ Rm), T,
                 perturbed=base.perturbed(dV), save_every=save, w2=False,
                 vtx=False, progress=False, cluster_delta=p["delta"], cluster_tol=p["pde_tol"],
                 cluster_criterion="atoms_w2", stop_after_exit=False, active=active,
                 tail_mass=ClusterState.LIGHT * p["pde_tol"])  # fmt: skip
    if comm.rank != 0:
        return {}
    y = res.centroids / np.linalg.norm(res.centroids, axis=1)[:, None]
    a = res.areas
    Y = np.broadcast_to(y, (len(res.times), *y.shape))

    def c_of(i):  # μ_t's heaviest basin's centre, as ClusterState finds it at a save
        cl = density_clusters(res.centroids, res.density[i] * a, a,
                              light=ClusterState.LIGHT * p["pde_tol"])  # fmt: skip
        return cl.centres[int(np.argmax(cl.masses))]

    rec = _record(res.times, {"nu": (Y, res.density_perturbed * a), "mu": (Y, res.density * a)},
                  c_of, Rm @ _axis(p))  # fmt: skip
    te, tx = crossing_times(res.step_times, res.column("atoms_w2"), p["delta"], strict=True)
    tbe, _ = crossing_times(res.step_times, res.column("atoms_w2_base"), p["delta"],
                            strict=True)  # fmt: skip
    return {"times": res.times, **rec, "t_enter": te, "t_exit": tx, "t_base_enter": tbe,
            "h": math.sqrt(4 * math.pi / len(a)), "cells": len(a), "eps": eps,
            "step_times": res.step_times, "w2_steps": res.column("atoms_w2"),
            "w2_base_steps": res.column("atoms_w2_base"), "angle": angle}  # fmt: skip


def _axis(p: dict) -> np.ndarray:
    """The axis ``m/|m|`` of ρ0 = 1 + 3⟨m, x⟩ (the base flow's cluster stays on it)."""
    m = sample_particles(Uniform(), p["n"], 3, seed=p["seed"]).mean(axis=0)
    return m / np.linalg.norm(m)


def run_particles(n: int, dt: float, T: float) -> dict:
    """The particles of :func:`phase_particles_case` at the lattice draw (n points), RK4 step
    ``dt``, saved every ``dt``; ``c`` the final base configuration's heaviest cluster."""
    p, eps = small_case()
    x0 = conv_points(dict(p, conv_draw="quantile"), 3, n, 0)
    base = simulate_particles(identity_model(3), x0, T, dt=dt, save_every=dt)
    pert = simulate_particles(identity_model(3).perturbed(e2_perturbation(3, eps)), x0, T,
                              dt=dt, save_every=dt)  # fmt: skip
    cl = find_clusters(base.positions[-1], None, radius=p["delta"] / 2, min_mass=ATOM_MIN_MASS)
    c = cl.centres[int(np.argmax(cl.masses))]
    w = np.ones((len(base.times), n))
    rec = _record(base.times, {"nu": (pert.positions, w), "mu": (base.positions, w)},
                  lambda i: c, _axis(p))  # fmt: skip
    te, tx = crossing_times(base.times, rec["w2_nu"], p["delta"], strict=True)
    tbe, _ = crossing_times(base.times, rec["w2_mu"], p["delta"], strict=True)
    return {"times": base.times, **rec, "t_enter": te, "t_exit": tx, "t_base_enter": tbe,
            "n": n, "eps": eps, "clusters": len(cl.centres)}  # fmt: skip


def hull_radius(points: np.ndarray, u: np.ndarray) -> np.ndarray:
    """The radial function of the convex hull of the unit vectors ``points`` (n, 3) in the
    directions ``u`` (k, 3): the largest ``|x̄|`` of a first moment ``x̄ = Σ λ_j y_j``
    (``λ >= 0``, ``Σ λ = 1``) pointing along ``u``. Every measure on the points has spread
    ``s² = 1 − |x̄|² >= 1 − ρ(u)²`` about its mean: the cell masses read at the projected
    centroids cannot hold a point mass at ``u`` tighter than ``s_min = (1 − ρ(u)²)^{1/2}``,
    ``O(h)``, zero at a centroid, largest at the centre of a hull facet."""
    from scipy.spatial import ConvexHull

    eq = ConvexHull(points).equations  # n·x + b <= 0 inside, |n| = 1
    u = np.atleast_2d(u)
    out = np.empty(len(u))
    for i in range(0, len(u), 256):  # chunks: (256, facets) at a time
        cos = u[i : i + 256] @ eq[:, :3].T
        with np.errstate(divide="ignore"):
            out[i : i + 256] = np.where(cos > 0, -eq[:, 3] / cos, np.inf).min(axis=1)
    return out


def hull_spread(level: int, u: np.ndarray) -> np.ndarray:
    """``s_min`` of :func:`hull_radius` for the projected centroids of icosphere ``level``."""
    from mpi4py import MPI

    from solver.mesh import sphere_mesh

    y = sphere_mesh(MPI.COMM_SELF, 2, refinement=level).centroids
    rho = hull_radius(y / np.linalg.norm(y, axis=1)[:, None], u)
    return np.sqrt(np.maximum(0.0, 1 - rho**2))


def _at(rec: dict, key: str, t: float) -> float:
    return float(np.interp(t, rec["times"], rec[key]))


def hull_reading(r: dict, delta: float) -> dict:
    """For a PDE run: ``smin_nu`` / ``smin_mu`` (:func:`hull_spread` along each flow's mean
    direction), and ``w2h_nu`` / ``w2h_mu``, the W₂ state with the hull's bias removed:
    ``W₂² = 2 (1 − ⟨c, x̄⟩)`` for unit atoms and one atom ``c``, and a point mass at ``u``
    held by the cells as tightly as they can has ``x̄ = ρ(u) u``; so
    ``w2h² = 2 (1 − (|x̄| / ρ(u)) cos θ)``; and its crossings of ``delta`` between the saved
    times (``th_enter``, ``th_exit``, ``th_base_enter``), beside those of the plain W₂ read at
    the same saves (``ts_*``: the sampling's own error against the per-step ``t_*``)."""
    level = round(math.log(float(r["cells"]) / 20, 4))
    out = {}
    for f in ("nu", "mu"):
        smin = hull_spread(level, r[f"u_{f}"])
        rho = np.sqrt(1 - smin**2)
        xbar = np.sqrt(np.maximum(0.0, 1 - r[f"s_{f}"] ** 2))
        out[f"smin_{f}"] = smin
        out[f"w2h_{f}"] = np.sqrt(np.maximum(0.0, 2 * (1 - xbar / rho * np.cos(r[f"theta_{f}"]))))
    t = r["times"]
    out["th_enter"], out["th_exit"] = crossing_times(t, out["w2h_nu"], delta, strict=True)
    out["th_base_enter"], _ = crossing_times(t, out["w2h_mu"], delta, strict=True)
    out["ts_enter"], out["ts_exit"] = crossing_times(t, r["w2_nu"], delta, strict=True)
    out["ts_base_enter"], _ = crossing_times(t, r["w2_mu"], delta, strict=True)
    return out


def predict(ref: str, levels: list[int], angles: tuple[float, ...] = (0.0,)) -> None:
    """The exit the cells would give if they held the particles' ν cluster as tightly as they
    can: ``W₂² = 2 (1 − ρ_L(u) cos θ)`` along the reference's (particles') mean direction ``u``
    and angle ``θ`` from its atom (:func:`hull_radius` of icosphere level ``L``), crossed
    through ``δ`` between the saved times; its spread ``s_min`` at that exit, and the mesh
    size ``h = (4π / cells)^{1/2}``; for each of ``angles`` (the problem turned by
    :func:`rotation`, i.e. the particles' path carried into the mesh's frame)."""
    p, _ = small_case()
    R = dict(np.load(ref))
    _, tx = crossing_times(R["times"], R["w2_nu"], p["delta"], strict=True)
    print(f"{os.path.basename(ref)}: exit {float(R['t_exit']):.4f} (at the saves {tx:.4f})")
    for level, angle in [(lv, a) for lv in levels for a in angles]:
        smin = hull_spread(level, R["u_nu"] @ rotation(angle).T)
        w2 = np.sqrt(2 * (1 - np.sqrt(1 - smin**2) * np.cos(R["theta_nu"])))
        _, tl = crossing_times(R["times"], w2, p["delta"], strict=True)
        h = math.sqrt(4 * math.pi / (20 * 4**level))
        at = float(np.interp(tl, R["times"], smin))
        print(f"level {level} (h = {h:.4f}, angle {angle:g}): predicted exit {tl:.4f} "
              f"({tl - tx:+.4f}), s_min at it {at:.5f}")  # fmt: skip


def compare(paths: list[str], ref: str, times: list[float]) -> None:
    """Tables: the crossing times of each run (per step; for the PDE also at the saves, plain
    and with the hull's bias removed, :func:`hull_reading`) against the reference
    (particles); then for each time ``θ_ν``, ``s_ν`` (and the PDE's ``s_min``), ``W₂(ν)``,
    ``s_μ``, the atom's angle from ``m``, and ``θ_ν`` minus the reference's."""
    p, _ = small_case()
    R = dict(np.load(ref))
    runs = [(os.path.basename(q), dict(np.load(q))) for q in paths]
    for _, r in runs:
        if "u_nu" in r and "cells" in r:
            r.update(hull_reading(r, p["delta"]))
    cols = ("t_enter", "t_exit", "t_base_enter")
    print(f"{'run':16s}" + "".join(f"{c:>14s}" for c in cols) + "   (per step | at saves | hull)")
    print(f"{os.path.basename(ref)[:16]:16s}" + "".join(f"{float(R[c]):14.4f}" for c in cols))
    for name, r in runs:
        row = f"{name[:16]:16s}" + "".join(f"{float(r[c]):14.4f}" for c in cols)
        if "th_exit" in r:
            row += " | " + " ".join(f"{float(r['ts' + c[1:]]):.4f}" for c in cols)
            row += " | " + " ".join(f"{float(r['th' + c[1:]]):.4f}" for c in cols)
        print(row)
    keys = ("theta_nu", "s_nu", "smin_nu", "w2_nu", "w2h_nu", "s_mu", "smin_mu", "c_axis")
    print("t      run            " + "  ".join(f"{k:>9s}" for k in keys) + "  dtheta_nu")
    for t in times:
        for name, r in [("reference", R), *runs]:
            vals = "  ".join(f"{_at(r, k, t):9.5f}" if k in r else f"{'':9s}" for k in keys)
            lead = _at(r, "theta_nu", t) - _at(R, "theta_nu", t)
            print(f"{t:5.2f}  {name[:14]:14s} {vals}  {lead:+.5f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    a = sub.add_parser("pde")
    a.add_argument("level", type=int)
    a.add_argument("--save", type=float, default=0.25)
    a.add_argument("--T", type=float, default=14.0)
    a.add_argument("--active", type=float, default=None)
    a.add_argument("--angle", type=float, default=0.0, help="turn the problem (rad)")
    a.add_argument("--out", required=True)
    b = sub.add_parser("particles")
    b.add_argument("n", type=int)
    b.add_argument("--dt", type=float, default=0.1)
    b.add_argument("--T", type=float, default=14.0)
    b.add_argument("--out", required=True)
    c = sub.add_parser("compare")
    c.add_argument("runs", nargs="+")
    c.add_argument("--ref", required=True)
    c.add_argument("--times", type=float, nargs="+", default=[4, 6, 8, 10, 12, 13])
    e = sub.add_parser("predict")
    e.add_argument("ref")
    e.add_argument("--levels", type=int, nargs="+", default=[3, 4, 5, 6, 7])
    e.add_argument("--angles", type=float, nargs="+", default=[0.0])
    args = ap.parse_args()
    if args.what == "predict":
        predict(args.ref, args.levels, tuple(args.angles))
        return
    if args.what == "compare":
        compare(args.runs, args.ref, args.times)
        return
    load0, w0, c0 = os.getloadavg()[0], time.perf_counter(), time.process_time()
    if args.what == "pde":
        out = run_pde(args.level, args.save, args.T, args.active, args.angle)
    else:
        out = run_particles(args.n, args.dt, args.T)
    if out:
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        np.savez(args.out, **out, wall=wall, cpu=cpu)
        print(json.dumps({k: float(out[k]) for k in ("t_enter", "t_exit", "t_base_enter")}
                         | {"wall": round(wall, 1), "cpu": round(cpu, 1),
                            "load": [round(load0, 2), round(os.getloadavg()[0], 2)]}))  # fmt: skip


if __name__ == "__main__":
    main()
