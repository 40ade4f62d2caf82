"""Validation layer: PDE vs particles in W2, the Prop 3.1 bound, the Prop 3.3 criterion.

``python -m solver validate CONFIG.toml --output DIR`` runs, from one config:

1. **PDE vs particles.** The base flow on several meshes (``[validation] levels``) and particle
   systems of several sizes (``sizes``, ``seeds`` each) from the same initial density and
   model; ``W2(PDE_h(t), particles_n(t))`` at every saved time. Theory: the empirical measure
   of n i.i.d. samples is at W2 ~ n^{-1/2} from μ on S^1 (~ (log n / n)^{1/2} on S^2), until
   the mesh error floor, which falls with h.
2. **Prop 3.1.** Base and perturbed flows: measured ``W2(μ_t, ν_t)`` (PDE, finest level) and
   the synchronous-coupling distance of the particle systems (an upper bound of their W2)
   against the rigorous bound of :func:`solver.w2_bound` (derivation in docs/stability.md).
   A violation by the particles is a bug in the derivation (or the integrator); a violation by
   the PDE alone is a discretisation error of the solver: the report says which.
3. **Prop 3.3** (when ``A = V`` is symmetric PSD): predicted stability and drift bound, and the
   measured long-time cluster directions of both particle flows.

Outputs: ``report.md`` (tables + PNG plots), ``pde_vs_particles.csv``, ``stability.csv``,
``spectral.csv``. All computed on rank 0 from gathered data, so identical for any rank count.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from .analysis import cluster_direction, spectral_criterion, w2_bound, wasserstein
from .io import atomic_write_text, build_initial, build_model, defaults, write_csv
from .particles import sample_particles, simulate_particles

__all__ = ["validate", "w2_between_runs", "w2_floor_note"]


def _mesh_levels(cfg: dict) -> list[dict]:
    m, v = cfg["mesh"], cfg.get("validation", {})
    levels = v.get("levels")
    if "file" in m:  # a mesh file is validated on itself (the config refuses levels with it)
        return [m]
    if m["sphere"] == 1:
        levels = levels or [max(16, m["cells"] // 4), max(32, m["cells"] // 2), m["cells"]]
        return [{"sphere": 1, "cells": int(n)} for n in levels]
    levels = levels or [max(0, m["refinement"] - 2), max(0, m["refinement"] - 1),
                        m["refinement"]]  # fmt: skip
    return [{"sphere": 2, "refinement": int(k)} for k in sorted(set(levels))]


def w2_between_runs(centroids, areas, rho_a, rho_b, method="auto") -> float:
    """W2 between two cell densities on the same mesh (atoms at the centroids)."""
    return wasserstein(centroids, rho_a * areas, centroids, rho_b * areas, 2, method)


def _coupling(x: np.ndarray, y: np.ndarray, *, geodesic: bool) -> np.ndarray:
    """``(mean_i dist(x_i(t), y_i(t))^2)^{1/2}`` per time: the synchronous coupling cost,
    an upper bound of W2 of the two empirical measures (chordal or geodesic distance)."""
    chord = np.linalg.norm(x - y, axis=-1)
    dist = 2 * np.arcsin(np.clip(chord / 2, 0, 1)) if geodesic else chord
    return np.sqrt(np.mean(dist**2, axis=-1))


def _mesh_name(mesh_kw: dict, num_cells: int) -> str:
    """Legend name of a mesh: "icosphere level k" on generated S^2 meshes, else "n cells"."""
    if "refinement" in mesh_kw:
        return f"icosphere level {mesh_kw['refinement']}"
    return f"{num_cells:,} cells"


def _plot_w2_vs_n(rows, path, title, names):
    """W2(PDE, particles) at the final time against n, one curve per mesh (``names[level]``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for lev in sorted(set(r[0] for r in rows)):
        sel = np.array([r for r in rows if r[0] == lev])
        ns = np.unique(sel[:, 1])
        mean = [sel[sel[:, 1] == n, 3].mean() for n in ns]
        std = [sel[sel[:, 1] == n, 3].std() for n in ns]
        ax.errorbar(ns, mean, yerr=std, marker="o", capsize=3, label=names[int(lev)])
    ns = np.unique(np.array(rows)[:, 1])
    ref = np.array(rows)[:, 3].max() * np.sqrt(ns[0] / ns)
    ax.plot(ns, ref, "k--", lw=1, label=r"$\propto n^{-1/2}$")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(ns, [f"{int(n):,}" for n in ns])  # the sizes run, no crowded minor labels
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("particles n")
    ax.set_ylabel(r"$W_2$(PDE, particles) at final time")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_bound(times, pde, coupling, bound, path, title):
    """The measured distances and the Prop 3.1 bound on a log axis. Zero distances (t = 0:
    both flows start from the same density) have no place on it and are left out; the axis
    starts at a third of the smallest positive value shown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [(pde, "o-", r"$W_2(\mu_t,\nu_t)$ PDE (geodesic)"),
              (coupling, "s-", "particles, coupling distance (geodesic)"),
              (bound, "k--", "Prop 3.1 bound, geodesic (docs/stability.md)")]  # fmt: skip
    fig, ax = plt.subplots(figsize=(6, 4.2))
    positive = []
    for y, style, label in series:
        y = np.asarray(y, dtype=float)
        ok = y > 0
        ax.semilogy(np.asarray(times)[ok], y[ok], style, label=label)
        positive.extend(y[ok])
    if positive:
        ax.set_ylim(bottom=min(positive) / 3)
    ax.set_xlim(left=float(np.min(times)))
    ax.set_xlabel("t (depth)")
    ax.set_ylabel("distance between the base and the perturbed flow")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def w2_floor_note(ns, means) -> str:
    """What the W2 (PDE vs particles) column of the finest mesh says, as a sentence.

    The empirical measure of ``n`` samples is at ``W2 ~ n^{-1/2}`` from the exact one (S^1),
    so while the Monte Carlo error dominates, W2 falls at about that rate; once it is below
    the mesh error (the distance of the mesh solution to the exact flow) W2 stops falling.
    The floor is taken as reached from the first pair of sizes over which the local slope
    ``log(m_{k+1}/m_k) / log(n_{k+1}/n_k)`` is above ``-1/4`` (half the Monte Carlo rate).
    """
    ns, means = np.asarray(ns, float), np.asarray(means, float)
    slopes = np.diff(np.log(means)) / np.diff(np.log(ns))
    flat = np.flatnonzero(slopes > -0.25)
    if len(flat):
        k = int(flat[0])
        return (f"W2 no longer falls as n^-1/2 from n = {ns[k]:.0f} to {ns[k + 1]:.0f} "
                f"(local slope {slopes[k]:.2f}): the mesh error floor is reached, and more "
                "particles only shrink the Monte Carlo part; refine the mesh "
                "(`validation.levels`) to lower the floor.")  # fmt: skip
    fit = np.polyfit(np.log(ns), np.log(means), 1)[0]
    return (
        f"W2 falls as n^{fit:.2f} over these n (Monte Carlo rate: -0.5): the mesh error "
        "floor lies below the particle error here."
    )


def validate(comm, cfg: dict, output: str | Path, *, progress: bool = True) -> dict:
    """Run the validation suite of a resolved config; write the report into ``output``.

    With ``progress``, rank 0 says on stderr which phase runs (particles of each size and
    seed, the PDE on each mesh, the coupled particle pair, the spectral check)."""
    from .run import evolve, mesh_from_config

    out = Path(output)
    rank0 = comm.rank == 0

    def say(msg: str) -> None:
        if progress and rank0:
            print(f"validate: {msg}", file=sys.stderr, flush=True)

    if rank0:
        out.mkdir(parents=True, exist_ok=True)
    v = {"levels": None, **defaults("validation"), **cfg.get("validation", {})}
    base, pert = build_model(cfg)
    init = build_initial(cfg["initial"])
    T, save = cfg["time"]["T"], cfg["time"]["save_every"]
    d = base.d
    summary: dict = {}

    # 1. PDE vs particles -------------------------------------------------------------------
    parts: dict[tuple[int, int], object] = {}
    for n in v["sizes"]:
        for s in range(v["seeds"]):
            say(f"[1/3] particles, n = {n}, seed {s + 1} of {v['seeds']}")
            x0 = sample_particles(init, n, d, seed=1000 + s)
            parts[n, s] = simulate_particles(base, x0, T, dt=v["particle_dt"], save_every=save,
                                             comm=comm)  # fmt: skip
    rows = []
    names: dict[int, str] = {}  # legend name of each mesh
    finest = None
    levels = _mesh_levels(cfg)
    for li, mesh_kw in enumerate(levels):
        sm = mesh_from_config(comm, mesh_kw)
        last = li == len(levels) - 1
        say(f"[1/3] PDE on mesh {li + 1} of {len(levels)} ({sm.num_cells} cells)"
            + (", base and perturbed" if last and pert is not None else ""))  # fmt: skip
        res = evolve(sm, base, init, T, perturbed=pert if last else None, cfl=cfg["time"]["cfl"],
                     save_every=save, progress=progress, degree=cfg["scheme"]["degree"],
                     method=cfg["velocity"]["method"],
                     tolerance=cfg["velocity"]["tolerance"])  # fmt: skip
        lev = mesh_kw.get("cells", mesh_kw.get("refinement", sm.num_cells))
        names[int(lev)] = _mesh_name(mesh_kw, sm.num_cells)
        if rank0:
            for (n, s), pr in parts.items():
                for k, t in enumerate(res.times):
                    w = wasserstein(res.centroids, res.density[k] * res.areas, pr.positions[k],
                                    None, 2, v["w2_method"])  # fmt: skip
                    rows.append([lev, n, s, t, w])
        if last:
            finest = res
    cols = ["level", "n", "seed", "t", "w2"]
    if rank0:
        write_csv(out / "pde_vs_particles.csv", cols, np.array(rows))
        arr = np.array(rows)
        fin = arr[np.isclose(arr[:, 3], T)]
        _plot_w2_vs_n(fin[:, [0, 1, 2, 4]].tolist(), out / "w2_vs_n.png",
                      f"$S^{d - 1}$: PDE vs particles, t = {T:g}", names)  # fmt: skip
        table = {}
        for lev in np.unique(fin[:, 0]):
            for n in np.unique(fin[:, 1]):
                sel = fin[(fin[:, 0] == lev) & (fin[:, 1] == n), 4]
                table[int(lev), int(n)] = (sel.mean(), sel.std())
        top = int(np.max(fin[:, 0]))
        ns = np.unique(fin[:, 1])
        slope = np.polyfit(np.log(ns), np.log([table[top, int(n)][0] for n in ns]), 1)[0]
        summary["pde_vs_particles"] = {"table": table, "slope_finest": float(slope),
                                       "note": w2_floor_note(ns, [table[top, int(n)][0]
                                                                  for n in ns])}  # fmt: skip

    # 2. Prop 3.1 ------------------------------------------------------------------------------
    if pert is not None:
        say("[2/3] Prop 3.1: base and perturbed particles from the same start")
        n_c = min(v["sizes"][-1], 1000)
        x0 = sample_particles(init, n_c, d, seed=7)
        pb = simulate_particles(base, x0, T, dt=v["particle_dt"], save_every=save, comm=comm)
        pp = simulate_particles(pert, x0, T, dt=v["particle_dt"], save_every=save, comm=comm)
        if rank0:
            times = finest.times
            pde = np.array([
                w2_between_runs(finest.centroids, finest.areas, finest.density[k],
                                finest.density_perturbed[k], v["w2_method"])
                for k in range(len(times))
            ])  # fmt: skip
            coupling = _coupling(pb.positions, pp.positions, geodesic=False)
            arc = _coupling(pb.positions, pp.positions, geodesic=True)
            # docs/stability.md bounds the chordal (R^d) coupling distance; geodesic distances
            # are at most π/2 times chordal ones (arc = 2 arcsin(c/2) <= π c / 2)
            bound = w2_bound(base, pert, times)
            bound_geo = np.minimum(np.pi, 0.5 * np.pi * bound)
            write_csv(out / "stability.csv",
                      ["t", "w2_pde_geodesic", "coupling_particles_chordal",
                       "coupling_particles_geodesic", "bound_chordal", "bound_geodesic"],
                      np.column_stack([times, pde, coupling, arc, bound, bound_geo]))  # fmt: skip
            title = f"$S^{d - 1}$, {names[int(lev)]}: base vs LoRA-perturbed flow"
            _plot_bound(times, pde, arc, bound_geo, out / "stability.png", title)
            # W2 = sqrt(optimal cost): a cost exact to round-off u gives W2 to ~sqrt(u) only
            tol = np.sqrt(np.finfo(float).eps)
            viol_p = bool(np.any(coupling > bound * (1 + 1e-12) + 1e-14))
            viol_pde = bool(np.any(pde > bound_geo * (1 + 1e-12) + tol))
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(bound > 0, np.maximum(coupling / bound, pde / bound_geo), 0)
            summary["prop31"] = {
                "times": times, "pde": pde, "particles": coupling, "bound": bound,
                "bound_geodesic": bound_geo, "violated_by_particles": viol_p,
                "violated_by_pde": viol_pde, "tightness": float(np.max(ratio)),
            }  # fmt: skip

    # 3. Prop 3.3 ------------------------------------------------------------------------------
    A, V = base.parameters(0.0)
    sym_psd = np.allclose(A, A.T) and np.allclose(A, V) and np.linalg.eigvalsh(V).min() > -1e-12
    if pert is not None and sym_psd and rank0:
        say("[3/3] Prop 3.3: spectral criterion and the perturbed particles")
        dV = pert.parameters(0.0)[1] - V
        crit = spectral_criterion(V, dV)
        xs = parts[v["sizes"][-1], 0]
        pp = simulate_particles(pert, xs.positions[0], T, dt=v["particle_dt"], save_every=save)
        w = np.full(len(xs.positions[-1]), 1.0 / len(xs.positions[-1]))
        u = cluster_direction(xs.positions[-1], w)
        ut = cluster_direction(pp.positions[-1], w)
        measured = float(np.linalg.norm(u - ut))
        write_csv(out / "spectral.csv",
                  ["gap", "a", "b_norm", "E_norm", "stable", "drift_bound", "measured_drift"],
                  np.array([[crit.gap, crit.a, crit.b_norm, crit.E_norm, float(crit.stable),
                             crit.drift_bound, measured]]))  # fmt: skip
        summary["prop33"] = {"criterion": crit, "measured_drift": measured}

    if rank0:
        atomic_write_text(out / "report.md", _report(cfg, summary, v))
    return comm.bcast(summary if rank0 else None)


def _report(cfg: dict, s: dict, v: dict) -> str:
    d = len(cfg["model"]["V"])
    lines = [f"# Validation report (S^{d - 1})", ""]
    if "pde_vs_particles" in s:
        p = s["pde_vs_particles"]
        levels = sorted({k[0] for k in p["table"]})
        ns = sorted({k[1] for k in p["table"]})
        lines += [
            "## PDE vs particles", "",
            f"W2(PDE_h(T), particles_n(T)) at T = {cfg['time']['T']:g}, mean ± std over "
            f"{v['seeds']} seeds (`pde_vs_particles.csv` has every saved time).", "",
            "| mesh \\ n | " + " | ".join(str(n) for n in ns) + " |",
            "|---" * (len(ns) + 1) + "|",
        ]  # fmt: skip
        for lev in levels:
            cells = [f"{p['table'][lev, n][0]:.4f} ± {p['table'][lev, n][1]:.4f}" for n in ns]
            lines.append(f"| {lev} | " + " | ".join(cells) + " |")
        lines += ["", f"Fitted slope on the finest mesh: W2 ~ n^{p['slope_finest']:.2f} "
                  "(Monte Carlo rate: -0.5 until the mesh error floor). " + p["note"], "",
                  "![W2 vs n](w2_vs_n.png)", ""]  # fmt: skip
    if "prop31" in s:
        q = s["prop31"]
        lines += ["## Prop 3.1: finite-time W2 stability bound", "",
                  "Particles: synchronous-coupling distance in R^d (an upper bound of their W2) "
                  "against the bound D(t) of docs/stability.md; PDE: geodesic W2 against "
                  "min(π, π/2 · D(t)).", "",
                  "| t | W2 PDE (geodesic) | bound | particles (chordal) | bound |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for t, a, ga, b, c in zip(q["times"], q["pde"], q["bound_geodesic"], q["particles"],
                                  q["bound"], strict=True):  # fmt: skip
            lines.append(f"| {t:g} | {a:.3e} | {ga:.3e} | {b:.3e} | {c:.3e} |")
        verdict = "holds at every saved time"
        if q["violated_by_particles"]:
            verdict = (
                "VIOLATED by the particle coupling: a bug in the derivation of the bound "
                "(or in the particle integrator)"
            )
        elif q["violated_by_pde"]:
            verdict = (
                "VIOLATED by the PDE only: the discretisation error of the solver exceeds "
                "the margin; refine the mesh"
            )
        lines += ["", f"The bound {verdict}. Tightness (max measured / bound): "
                  f"{q['tightness']:.3g}.", "", "![bound](stability.png)", ""]  # fmt: skip
    if "prop33" in s:
        c, m = s["prop33"]["criterion"], s["prop33"]["measured_drift"]
        lines += ["## Prop 3.3: spectral criterion (A = V ⪰ 0)", "",
                  f"gap = {c.gap:.4g}, a = {c.a:.4g}, ‖b‖ = {c.b_norm:.4g}, ‖E‖ = {c.E_norm:.4g}",
                  f"predicted: {'stable' if c.stable else 'not guaranteed stable'}; drift bound "
                  f"(2‖b‖ + ‖E‖)/(gap + a) = {c.drift_bound:.4g}",
                  f"measured |u1 − ũ1| (particle cluster directions at T) = {m:.4g}",
                  ""]  # fmt: skip
    return "\n".join(lines) + "\n"
