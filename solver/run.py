"""Drive a run: base flow μ and perturbed flow ν together, diagnostics, output, resume.

:func:`evolve` is the library entry point (``solver.evolve``); :func:`run_config` builds
everything from a resolved TOML config (what ``python -m solver run`` does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .analysis import (
    check_state,
    density_diagnostics,
    diagnostic_columns,
    drift_diagnostics,
    wasserstein,
)
from .io import (
    FieldWriter,
    atomic_savez,
    atomic_write_text,
    build_initial,
    build_model,
    dump_toml,
    write_csv,
    write_versions,
)
from .mesh import SphereMesh, load_mesh, sphere_mesh
from .model import Density, Model
from .transport import NonlocalField, PrescribedField, Transport, make_operator, time_grid

__all__ = ["Result", "evolve", "run_config", "initial_cell_averages", "mesh_from_config"]


@dataclass
class Result:
    """What a run returns (arrays gathered on rank 0; ``None`` on the other ranks).

    ``times`` (nt,), ``density`` / ``density_perturbed`` (nt, ncells) in original cell order,
    ``centroids`` (ncells, d), ``areas`` (ncells,), ``diagnostics`` (nsteps+1, ncols) with
    ``columns``; ``step_times`` (nsteps+1,) are the times of the diagnostics rows.
    """

    times: np.ndarray
    step_times: np.ndarray
    columns: list[str]
    diagnostics: np.ndarray
    density: np.ndarray | None = None
    density_perturbed: np.ndarray | None = None
    centroids: np.ndarray | None = None
    areas: np.ndarray | None = None
    w2: np.ndarray | None = None

    def column(self, name: str) -> np.ndarray:
        return self.diagnostics[:, self.columns.index(name)]


def initial_cell_averages(sm: SphereMesh, density: Density | Callable, degree: int = 4):
    """Cell averages of an (unnormalised) initial density, normalised to unit mass."""
    return make_operator(sm, 0).initial_state(density, degree)


def mesh_from_config(comm, m: dict) -> SphereMesh:
    if "file" in m:
        return load_mesh(comm, m["file"], project=m["project"])
    return sphere_mesh(comm, m["sphere"], refinement=m.get("refinement"), cells=m.get("cells"))


def evolve(
    sm: SphereMesh,
    model: Model | None,
    initial: Density | Callable | np.ndarray,
    T: float,
    *,
    perturbed: Model | None = None,
    cfl: float = 0.5,
    save_every: float | None = None,
    velocity: Callable[[np.ndarray, float], np.ndarray] | None = None,
    speed: float | None = None,
    method: str = "direct",
    tolerance: float = 1e-10,
    output: str | Path | None = None,
    vtx: bool = True,
    w2: bool = True,
    resume: bool = False,
    progress: bool = True,
    config: dict | None = None,
    degree: int = 0,
) -> Result:
    """Evolve the density by DG0 upwind + SSP-RK3 from ``initial`` to time ``T``.

    Parameters
    ----------
    sm : SphereMesh
        From :func:`solver.sphere_mesh` or :func:`solver.load_mesh`.
    model : Model or None
        Attention weights of the base flow μ (``None`` with a prescribed ``velocity``).
    initial : Density, callable or array
        Density family / function of points (normalised here), or owned cell averages.
    perturbed : Model, optional
        Perturbed weights: the flow ν is evolved alongside μ and drift is recorded.
    velocity, speed : callable, float, optional
        A prescribed velocity ``u(x, t)`` (for verification) and a bound of ``|u|``.
    cfl : float
        Fraction of the positivity limit ``Δt <= min |K|/|∂K| / sup|X|``.
    save_every : float, optional
        Interval between saved densities (default: only 0 and T).
    method, tolerance : str, float
        Nonlocal velocity evaluation (see :class:`solver.NonlocalVelocity`).
    output : path, optional
        Folder for ``result.npz``, ``diagnostics.csv``, VTX series, checkpoint.
    w2 : bool
        With a perturbation: ``W2(μ_t, ν_t)`` (geodesic cost, :func:`solver.wasserstein`) at
        every saved time, in ``Result.w2``, ``result.npz`` and ``w2.csv``.
    resume : bool
        Continue from ``output/checkpoint.npz`` when it matches this run.
    """
    comm = sm.comm
    op = make_operator(sm, degree)
    sm = op.sm  # DG1/DG2 work on the curved (P2) version of the mesh: same cells, same keys
    if velocity is not None:
        if speed is None:
            raise ValueError("a prescribed velocity needs `speed`, a bound of |u| (for the CFL)")
        fields = [PrescribedField(op, velocity, speed)]
    else:
        if model is None:
            raise ValueError("give a model (attention weights) or a prescribed velocity")
        fields = [NonlocalField(op, model, method=method, tolerance=tolerance)]
        if perturbed is not None:
            fields.append(NonlocalField(op, perturbed, method=method, tolerance=tolerance))
    flows = [Transport(op, f) for f in fields]
    two = len(flows) == 2

    if isinstance(initial, np.ndarray):
        rho0 = np.asarray(initial, dtype=float)
        if rho0.shape[:1] != (sm.num_owned,):
            raise ValueError(f"initial state must have {sm.num_owned} rows (owned cells)")
        rho0 = rho0 / sm.integrate(op.cell_averages(rho0))
    else:
        rho0 = op.initial_state(initial)
    speed_max = max(f.speed(T) for f in fields)
    jumps = [m.breakpoints(T) for m in (model, perturbed) if m is not None]
    bps = np.unique(np.concatenate([np.zeros(0), *jumps]))
    times, saved = time_grid(T, op.max_time_step(speed_max, cfl), save_every, bps)
    columns = diagnostic_columns(sm.gdim, two)

    out = Path(output) if output is not None else None
    rank0 = comm.rank == 0
    states = [rho0.copy() for _ in flows]
    rows: list[list[float]] = []
    snaps: list[list[np.ndarray]] = [[] for _ in flows]
    start = 0
    ckpt = out / "checkpoint.npz" if out is not None else None
    if resume and ckpt is not None and ckpt.is_file():
        with np.load(ckpt) as z:
            if z["step_times"].shape == times.shape and np.allclose(z["step_times"], times):
                start = int(z["step"])
                states = [sm.scatter(z[f"state{i}"]) for i in range(len(flows))]
                rows = z["diagnostics"].tolist()
                nsav = int(np.searchsorted(saved, start, side="right"))
                snaps = [list(z[f"snaps{i}"][:nsav]) for i in range(len(flows))] if rank0 else snaps
            elif rank0:
                print(f"checkpoint {ckpt} belongs to another run: starting from t = 0")

    writer = None
    if out is not None and rank0:
        out.mkdir(parents=True, exist_ok=True)
    if out is not None:
        comm.barrier()
        if config is not None and rank0:
            atomic_write_text(out / "config.toml", dump_toml(config))
        if rank0:
            write_versions(out / "versions.json")
        if vtx:
            names = ["density"] + (["density_perturbed"] if two else [])
            writer = FieldWriter(sm, out / "density", names)

    def record(k: int) -> None:
        t = float(times[k])
        avgs = [op.cell_averages(s) for s in states]
        diags = [density_diagnostics(sm, a) for a in avgs]
        for i, dg in enumerate(diags):  # the initial state has unit mass
            check_state(dg, t, 1.0, "density_perturbed" if i else "density")
        row = [t] + diags[0]
        if two:
            row += diags[1] + drift_diagnostics(sm, diags[0], diags[1], *avgs)
        if k == len(rows):
            rows.append(row)
        if k in saved_set:
            gathered = [sm.gather(s) for s in states]
            if rank0:
                for i, g in enumerate(gathered):
                    snaps[i].append(op.cell_averages(g))
            if writer is not None:
                writer.write(t, avgs)
            if ckpt is not None and k > 0:
                if rank0:
                    atomic_savez(
                        ckpt, step=k, step_times=times, diagnostics=np.array(rows),
                        **{f"state{i}": g for i, g in enumerate(gathered)},
                        **{f"snaps{i}": np.array(s) for i, s in enumerate(snaps)},
                    )  # fmt: skip
                comm.barrier()

    saved_set = set(int(s) for s in saved)
    if start == 0:
        record(0)
    nsteps = len(times) - 1
    bar = tqdm(
        total=nsteps, initial=start, disable=(not progress) or not rank0, delay=2.0,
        unit="step", desc="evolve", dynamic_ncols=True,
    )  # fmt: skip
    for k in range(start, nsteps):
        t, dt = float(times[k]), float(times[k + 1] - times[k])
        states = [f.step(s, t, dt) for f, s in zip(flows, states, strict=True)]
        record(k + 1)
        bar.update(1)
    bar.close()
    if writer is not None:
        writer.close()

    diag = np.array(rows)
    res = Result(times=times[saved], step_times=times, columns=columns, diagnostics=diag)
    cents, areas = sm.gather(sm.centroids), sm.gather(sm.areas)
    mesh_arrays = sm.gather_mesh()
    if rank0:
        res.density = np.array(snaps[0])
        res.density_perturbed = np.array(snaps[1]) if two else None
        res.centroids, res.areas = cents, areas
        if two and w2:
            res.w2 = np.array([
                wasserstein(cents, a * areas, cents, b * areas, 2)
                for a, b in zip(res.density, res.density_perturbed, strict=True)
            ])  # fmt: skip
        if out is not None:
            points, cells = mesh_arrays
            arrays = dict(times=res.times, centroids=cents, areas=areas, density=res.density,
                          points=points, cells=cells)  # fmt: skip
            if two:
                arrays["density_perturbed"] = res.density_perturbed
            if res.w2 is not None:
                arrays["w2"] = res.w2
                write_csv(out / "w2.csv", ["t", "w2"], np.column_stack([res.times, res.w2]))
            atomic_savez(out / "result.npz", **arrays)
            write_csv(out / "diagnostics.csv", columns, diag)
    comm.barrier()
    return res


def run_config(comm, cfg: dict, output: str | Path | None, *, resume=False, progress=True):
    """Run a resolved config (see :func:`solver.load_config`)."""
    sm = mesh_from_config(comm, cfg["mesh"])
    base, pert = build_model(cfg)
    if base.d != sm.gdim:
        raise ValueError(
            f"model matrices are {base.d} x {base.d} but the mesh lives in R^{sm.gdim}: "
            f"give {sm.gdim} x {sm.gdim} Q, K, V"
        )
    t = cfg["time"]
    return evolve(
        sm, base, build_initial(cfg["initial"]), t["T"], perturbed=pert, cfl=t["cfl"],
        save_every=t["save_every"], method=cfg["velocity"]["method"],
        tolerance=cfg["velocity"]["tolerance"], output=output, vtx=cfg["output"]["vtx"],
        w2=cfg["output"]["w2"],
        resume=resume, progress=progress, config=cfg, degree=cfg["scheme"]["degree"],
    )  # fmt: skip
