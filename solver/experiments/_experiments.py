r"""The forgetting experiments of arXiv 2402.15415, as pure functions and resumable sweeps.

One section per experiment (the scripts ``scripts/exp_*.py`` are thin command lines around
``run_*``; ``docs/experiments.md`` shows their figures):

1. :func:`run_fig2` — Fig 2: d = 2, n = 20, ``Q = K = V = I`` vs ``Ṽ = I − ε e_2e_2ᵀ``;
   particles and the PDE (narrow von Mises-Fisher bumps at the particles) side by side.
2. :func:`run_phase_diagram` — Fig 3: the δ-cluster state over (ε, t), S^1 and S^2; the
   transition curve ``t_exit(ε)`` and its exponent.
3. :func:`run_random_adapters` — Thm 4.2: i.i.d. adapters per layer; final ``W2`` against
   ``η_L / √L`` for several depths ``L``.
4. :func:`run_depth` — Thm 4.6: critical depth ``T*`` against ε, vs the point-mass law
   ``T* = ln(tan φ0 / tan(φ0 − Δθ)) / ε``.
5. :func:`run_lora_kinds` — tied, per-layer random, orthogonal (``P_⊥ ΔV P_⊥``) and aligned
   (``u_2 u_1ᵀ``, the smallest gap) LoRA of one norm: ``W2`` and cluster drift over time.
6. :func:`run_two_clusters` — Fig 4: ``Q̃ = K̃ = √β e_1e_1ᵀ``, ``V = I``: two-point clustering.

Each ``run_*(params, out, comm=..., progress=..., budget=...)`` computes its cases with
:func:`solver.experiments.run_sweep` (CSV files in ``out``, resumable), then writes its figures and
``summary.json`` and returns the summary (``None`` when the case budget stopped it early).
The per-case functions (``*_case``) and plotting helpers (``plot_*``) can be called alone.

Conventions: particles use RK4 with the projection retraction
(:func:`solver.simulate_particles`); ``W2`` is geodesic (radians), exact (``S^1``: quantiles;
``S^{d-1}``, d ≥ 3: network simplex); chordal distances ``|x − c|`` in the δ-cluster state.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from ..analysis import (
    cluster_direction,
    crossing_times,
    find_clusters,
    spectral_criterion,
    wasserstein,
)
from ..io import ConfigError, atomic_write, atomic_write_text, load_result, toml_value
from ..model import Mixture, Model, RandomLoRA, ScheduledLoRA, TiedLoRA, Uniform, VonMisesFisher
from ..particles import sample_particles, simulate_particles
from ._sweep import Budget, SweepError, as_columns, run_sweep

__all__ = [
    "cli",
    "resolve_params",
    "point_mass_depth",
    "delta_distance",
    "run_fig2",
    "run_phase_diagram",
    "run_random_adapters",
    "run_depth",
    "run_lora_kinds",
    "run_two_clusters",
    "phase_case",
    "random_adapter_case",
    "depth_case",
    "lora_kind_case",
    "two_cluster_case",
]

# --------------------------------------------------------------------------------------------
# parameters, output folder, command line
# --------------------------------------------------------------------------------------------


def _coerce(name: str, ref, v):
    if isinstance(ref, bool):
        if not isinstance(v, bool):
            raise ConfigError(f"{name} must be true or false, got {v!r}")
        return v
    if isinstance(ref, int):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{name} must be an integer, got {v!r}")
        return v
    if isinstance(ref, float):
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ConfigError(f"{name} must be a finite number, got {v!r}")
        return float(v)
    if isinstance(ref, str):
        if not isinstance(v, str):
            raise ConfigError(f"{name} must be a string, got {v!r}")
        return v
    if isinstance(ref, list):
        if not isinstance(v, list) or not v:
            raise ConfigError(f"{name} must be a non-empty list, got {v!r}")
        return [_coerce(f"{name}[{i}]", ref[0], x) for i, x in enumerate(v)]
    raise TypeError(f"unsupported parameter type for {name}: {type(ref).__name__}")


def resolve_params(preset: dict, overrides: dict | None = None, source: str = "config") -> dict:
    """``preset`` with ``overrides`` applied; unknown keys and wrong types are
    :class:`~solver.ConfigError` naming the field (ints are accepted for floats)."""
    out = dict(preset)
    overrides = overrides or {}
    unknown = sorted(set(overrides) - set(preset))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; allowed: {sorted(preset)}")
    for k, v in overrides.items():
        out[k] = _coerce(f"{source}: {k}", preset[k], v)
    return out


def _load_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None


def _require(params: dict, name: str, ok: bool, what: str) -> None:
    if not ok:
        raise ConfigError(f"{name} must be {what}, got {params[name]!r}")


def _positive(params: dict, *names: str) -> None:
    for n in names:
        v = params[n]
        vals = v if isinstance(v, list) else [v]
        _require(params, n, all(x > 0 for x in vals), "> 0")


def params_text(name: str, params: dict) -> str:
    """The resolved parameters as TOML (written to ``params.toml``)."""
    lines = [f"# resolved parameters of the {name} experiment", f'experiment = "{name}"']
    lines += [f"{k} = {toml_value(v)}" for k, v in params.items()]
    return "\n".join(lines) + "\n"


def prepare_output(out: Path, name: str, params: dict, comm=None) -> None:
    """Create ``out`` and its ``params.toml``; refuse a folder made with other parameters
    (its finished cases would not belong to this sweep). Every ``run_*`` calls it after
    checking its parameters."""
    text = params_text(name, params)
    err = None
    if comm is None or comm.rank == 0:
        p = Path(out) / "params.toml"
        if p.is_file() and p.read_text() != text:
            try:
                old = tomllib.loads(p.read_text())
            except tomllib.TOMLDecodeError:
                old = {}
            new = tomllib.loads(text)
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            err = ConfigError(f"{out} holds results of other parameters (differing: {diff}); "
                              f"use another --output folder or delete it")  # fmt: skip
        else:
            atomic_write_text(p, text)
    if comm is not None and comm.size > 1:
        err = comm.bcast(err, root=0)
    if err is not None:
        raise err


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple | np.ndarray):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, float | np.floating):
        return float(v) if math.isfinite(v) else None
    return v


def _write_summary(out: Path, summary: dict, comm) -> None:
    if comm is None or comm.rank == 0:
        atomic_write_text(Path(out) / "summary.json",
                          json.dumps(_jsonable(summary), indent=2) + "\n")  # fmt: skip


def cli(argv, *, name: str, doc: str, presets: dict, run: Callable) -> int:
    """Command line shared by the ``scripts/exp_*.py`` scripts.

    ``--preset`` picks a parameter set, ``--config`` TOML keys override it, ``--output`` is
    the (resumable) output folder, ``--max-cases`` stops after that many new cases.
    Exit status: 0 done (or stopped by ``--max-cases``), 2 invalid input.
    """
    from mpi4py import MPI

    parser = argparse.ArgumentParser(
        prog=f"exp_{name}.py", description=doc.strip().splitlines()[0],
        epilog=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--config", type=Path, help="TOML file: top-level keys override the preset")
    parser.add_argument("--preset", choices=sorted(presets), default="small",
                        help="parameter set (default: small)")  # fmt: skip
    parser.add_argument(
        "--output",
        "-o",
        type=Path,
        default=Path("out") / name,
        help=f"output folder (default: out/{name}); a rerun resumes it",
    )
    parser.add_argument(
        "--max-cases",
        type=int,
        default=None,
        metavar="K",
        help="compute at most K new cases, then stop (run again to go on)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    comm = MPI.COMM_WORLD
    rank0 = comm.rank == 0
    try:
        overrides = _load_toml(args.config) if args.config is not None else {}
        src = str(args.config) if args.config is not None else "config"
        params = resolve_params(presets[args.preset], overrides, src)
        if args.max_cases is not None and args.max_cases < 0:
            raise ConfigError(f"--max-cases must be >= 0, got {args.max_cases}")
        budget = Budget(args.max_cases)
        summary = run(params, args.output, comm=comm, progress=not args.no_progress,
                      budget=budget)  # fmt: skip
    except (ConfigError, SweepError) as e:
        if rank0:
            print(f"error: {e}", file=sys.stderr)
        return 2
    if rank0:
        if summary is None:
            print(
                f"stopped after {args.max_cases} new case(s) (--max-cases); run the same "
                f"command again to continue: finished cases are kept in {args.output}"
            )
        else:
            print("\n".join(summary.get("report", [])))
            print(f"results: {args.output}")
    return 0


# --------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------

_MEMO: dict = {}


def _memo(key: tuple, fn: Callable):
    """Per-process cache of runs shared by several cases (e.g. the unperturbed flow)."""
    if key not in _MEMO:
        if len(_MEMO) >= 32:
            _MEMO.clear()
        _MEMO[key] = fn()
    return _MEMO[key]


def _identity_model(d: int, beta: float = 1.0) -> Model:
    s = math.sqrt(beta)
    return Model(s * np.eye(d), s * np.eye(d), np.eye(d))


def e2_perturbation(d: int, eps: float) -> TiedLoRA:
    """Tied ``ΔV = −ε e_2e_2ᵀ`` (so ``Ṽ = I − ε e_2e_2ᵀ`` for ``V = I``)."""
    dV = np.zeros((d, d))
    dV[1, 1] = -eps
    return TiedLoRA(np.zeros((d, d)), dV)


def point_mass_depth(p0, eps: float, dtheta: float, axis: int = 1) -> float:
    """Depth at which a point mass at ``p0`` under ``Ṽ = I − ε e_a e_aᵀ`` has turned by
    ``dtheta`` radians (``a = axis``), the base point staying put (``V = I``).

    ``p(t) = e^{tṼ} p0 / |·|``: the angle φ between ``p`` and the hyperplane ``e_a^⊥`` obeys
    ``tan φ(t) = tan φ0 e^{−εt}``, and ``p`` moves along a great circle, so
    ``T* = ln(tan φ0 / tan(φ0 − Δθ)) / ε`` (``nan`` when ``φ0 ≤ Δθ`` or ``ε ≤ 0``).
    """
    p0 = np.asarray(p0, dtype=float)
    phi0 = math.asin(min(1.0, abs(p0[axis]) / np.linalg.norm(p0)))
    if eps <= 0 or phi0 <= dtheta:
        return float("nan")
    if phi0 >= math.pi / 2 - 1e-15:
        return float("inf")
    return math.log(math.tan(phi0) / math.tan(phi0 - dtheta)) / eps


def delta_distance(positions: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """``max_i min_c |x_i(t) − c|`` at each saved time (``positions``: (nt, n, d)): the
    configuration is in the δ-cluster state exactly when this is ``< δ``
    (:func:`solver.analysis.delta_cluster_state`)."""
    nt, n, d = positions.shape
    dist, _ = cKDTree(centres).query(positions.reshape(-1, d), k=1)
    return dist.reshape(nt, n).max(axis=1)


def _directions(positions: np.ndarray) -> np.ndarray:
    return np.array([cluster_direction(x) for x in positions])


def _angle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.arccos(np.clip(np.sum(u * v, axis=-1), -1.0, 1.0))


def _w2(x: np.ndarray, y: np.ndarray, wx=None, wy=None) -> float:
    return float(wasserstein(x, wx, y, wy, p=2, method="exact" if x.shape[1] > 2 else "auto"))


def _loglog_fit(x, y) -> tuple[float, float]:
    """Least-squares ``log y = log c + a log x``: returns ``(a, c)`` (nan with < 2 points)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if ok.sum() < 2:
        return float("nan"), float("nan")
    a, b = np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)
    return float(a), float(math.exp(b))


def _nanmedian(x) -> float:
    x = np.asarray(x, dtype=float)
    return float(np.median(x[np.isfinite(x)])) if np.isfinite(x).any() else float("nan")


def _nanmean(x) -> float:
    x = np.asarray(x, dtype=float)
    return float(np.mean(x[np.isfinite(x)])) if np.isfinite(x).any() else float("nan")


def _nanmin(x) -> float:
    x = np.asarray(x, dtype=float)
    return float(np.min(x[np.isfinite(x)])) if np.isfinite(x).any() else float("nan")


def _nanmax(x) -> float:
    x = np.asarray(x, dtype=float)
    return float(np.max(x[np.isfinite(x)])) if np.isfinite(x).any() else float("nan")


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), layout="constrained")


def _save(fig, path: Path, comm=None) -> Path:
    """PNG written atomically (rank 0), reduced to a 256-colour palette (3x smaller)."""
    if comm is None or comm.rank == 0:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        try:
            from PIL import Image

            small = io.BytesIO()
            Image.open(buf).convert("RGB").quantize(256).save(small, format="png", optimize=True)
            buf = small
        except ImportError:  # pragma: no cover - Pillow comes with matplotlib
            pass
        atomic_write(Path(path), lambda f: f.write(buf.getvalue()))
    return Path(path)


def _theta_lines(t: np.ndarray, theta: np.ndarray):
    """Angles with NaN breaks where a trajectory wraps around ±π (for line plots)."""
    t, theta = np.asarray(t, float), np.asarray(theta, float)
    jump = np.abs(np.diff(theta)) > np.pi
    if not jump.any():
        return t, theta
    idx = np.flatnonzero(jump) + 1
    return np.insert(t, idx, np.nan), np.insert(theta, idx, np.nan)


def _trajectory_rows(res) -> list[dict]:
    rows = []
    for t, x in zip(res.times, res.positions, strict=True):
        th = np.arctan2(x[:, 1], x[:, 0])
        for i in range(len(x)):
            rows.append({"t": float(t), "particle": i, "x": float(x[i, 0]), "y": float(x[i, 1]),
                         "theta": float(th[i])})  # fmt: skip
    return rows


def _by(rows, **match) -> list[dict]:
    return [r for r in rows if all(r[k] == v for k, v in match.items())]


def _trajectories(rows) -> tuple[np.ndarray, np.ndarray]:
    """``(times, theta (nt, n))`` from rows with columns ``t, particle, theta``."""
    c = as_columns(rows)
    times = np.unique(c["t"])
    n = int(c["particle"].max()) + 1
    theta = c["theta"].reshape(len(times), n)
    return times, theta


# --------------------------------------------------------------------------------------------
# 1. Fig 2: particles and PDE, V = I vs Ṽ = I − ε e2e2ᵀ
# --------------------------------------------------------------------------------------------

FIG2_PARTICLE_COLUMNS = ["t", "particle", "x", "y", "theta"]
FIG2_COMPARISON_COLUMNS = [
    "t", "w2_drift_particles", "w2_drift_pde", "w2_pde_vs_particles_base",
    "w2_pde_vs_particles_perturbed",
]  # fmt: skip


def _fig2_check(p: dict) -> None:
    _positive(p, "n", "eps", "T", "dt", "save_every", "kappa", "cells", "cfl")
    _require(p, "cfl", p["cfl"] <= 1, "<= 1")


def fig2_models(p: dict) -> tuple[Model, Model]:
    base = _identity_model(2)
    return base, base.perturbed(e2_perturbation(2, p["eps"]))


def fig2_x0(p: dict) -> np.ndarray:
    return sample_particles(Uniform(), p["n"], 2, seed=p["seed"])


def fig2_particles(p: dict, flow: str):
    base, pert = fig2_models(p)
    model = base if flow == "base" else pert
    return simulate_particles(model, fig2_x0(p), p["T"], dt=p["dt"], save_every=p["save_every"])


def fig2_pde(p: dict, comm, output: Path | None, progress: bool = False):
    """The PDE on S^1 from narrow vMF bumps (κ) at the particles' initial positions; both
    flows in one :func:`solver.evolve` (resumable from ``output/checkpoint.npz``)."""
    from ..mesh import sphere_mesh
    from ..run import evolve

    x0 = fig2_x0(p)
    init = Mixture(tuple(VonMisesFisher(tuple(x), p["kappa"]) for x in x0), tuple([1.0] * len(x0)))
    sm = sphere_mesh(comm, 1, cells=p["cells"])
    base, pert = fig2_models(p)
    return evolve(sm, base, init, p["T"], perturbed=pert, cfl=p["cfl"], save_every=p["save_every"],
                  output=output, vtx=False, resume=True, progress=progress)  # fmt: skip


def fig2_comparison_rows(res, particles: dict) -> list[dict]:
    """``W2`` over time: base vs perturbed (particles and PDE), PDE vs particles per flow."""
    xc = res.centroids / np.linalg.norm(res.centroids, axis=1, keepdims=True)
    rows = []
    for k, t in enumerate(res.times):
        xb = particles["base"][k]
        xp = particles["perturbed"][k]
        wb = np.clip(res.density[k] * res.areas, 0, None)
        wp = np.clip(res.density_perturbed[k] * res.areas, 0, None)
        rows.append({
            "t": float(t),
            "w2_drift_particles": _w2(xb, xp),
            "w2_drift_pde": _w2(xc, xc, wb, wp),
            "w2_pde_vs_particles_base": _w2(xc, xb, wb, None),
            "w2_pde_vs_particles_perturbed": _w2(xc, xp, wp, None),
        })  # fmt: skip
    return rows


def run_fig2(p: dict, out, *, comm=None, progress=True, budget: Budget | None = None):
    """Fig 2: ``particles.csv`` (trajectories), ``comparison.csv`` (W2 over time),
    ``pde/result.npz`` (densities), ``fig2.png``."""
    _fig2_check(p)
    out = Path(out)
    if comm is None:  # the PDE needs a communicator
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
    prepare_output(out, "fig2", p, comm)
    budget = budget or Budget()
    flows = [{"flow": "base"}, {"flow": "perturbed"}]

    def particle_case(case):
        return _trajectory_rows(fig2_particles(p, case["flow"]))

    sw = run_sweep(out / "particles.csv", flows, particle_case, key=["flow"],
                   columns=FIG2_PARTICLE_COLUMNS, comm=comm, progress=progress, budget=budget,
                   desc="fig2 particles")  # fmt: skip
    if not sw.complete:
        return None
    prows = sw.rows
    positions = {}
    for f in ("base", "perturbed"):
        c = as_columns(_by(prows, flow=f))
        nt = len(np.unique(c["t"]))
        positions[f] = np.stack([c["x"], c["y"]], axis=1).reshape(nt, p["n"], 2)
    times = np.unique(as_columns(_by(prows, flow="base"))["t"])

    def pde_case(case):
        res = fig2_pde(p, comm, out / "pde", progress=progress)
        if comm.rank != 0:
            return None
        if not np.allclose(res.times, times):
            raise SweepError("PDE and particle save times differ")
        return fig2_comparison_rows(res, positions)

    sw = run_sweep(out / "comparison.csv", [{"solver": "pde"}], pde_case, key=["solver"],
                   columns=FIG2_COMPARISON_COLUMNS, comm=comm, mode="together", progress=False,
                   budget=budget)  # fmt: skip
    if not sw.complete:
        return None
    crows = sw.rows
    c = as_columns(crows)
    summary = {
        "eps": p["eps"],
        "final_w2_drift_particles": c["w2_drift_particles"][-1],
        "final_w2_drift_pde": c["w2_drift_pde"][-1],
        "max_w2_pde_vs_particles": max(c["w2_pde_vs_particles_base"].max(),
                                       c["w2_pde_vs_particles_perturbed"].max()),
    }  # fmt: skip
    # A cluster collapsed into one cell moves only if its drift beats the self-attraction at
    # the cell's faces, ~ h/2 (first-order upwind, vertex velocities): report both speeds.
    u = cluster_direction(positions["perturbed"][-1])
    summary["cluster_drift_speed"] = p["eps"] * abs(math.sin(2 * math.atan2(u[1], u[0]))) / 2
    summary["pde_cell_half_width"] = math.pi / p["cells"]
    summary["report"] = [
        f"Fig 2 (eps = {p['eps']}, n = {p['n']}, T = {p['T']}): final W2(mu_T, nu_T) = "
        f"{summary['final_w2_drift_particles']:.4g} (particles), "
        f"{summary['final_w2_drift_pde']:.4g} (PDE, {p['cells']} cells)",
        f"  PDE vs particles: max W2 = {summary['max_w2_pde_vs_particles']:.3g} rad",
        f"  cluster drift speed eps |sin 2theta| / 2 = {summary['cluster_drift_speed']:.3g} vs "
        f"PDE cell half-width h/2 = {summary['pde_cell_half_width']:.3g}: "
        + (
            "the PDE cluster is expected to stay pinned to its cell once collapsed"
            if summary["cluster_drift_speed"] < summary["pde_cell_half_width"]
            else "the PDE cluster can drift (slowed by the mesh)"
        ),
    ]
    if comm.rank == 0:
        plot_fig2(prows, crows, load_result(out / "pde"), p, out / "fig2.png")
    _write_summary(out, summary, comm)
    return summary


def plot_fig2(prows, crows, pde: dict, p: dict, path: Path) -> Path:
    """Particles (top), PDE density with the particles on top (middle), W2 (bottom)."""
    from matplotlib.colors import LogNorm

    fig = _figure(10, 9.5)
    axs = fig.subplots(3, 2)
    titles = {"base": "base: Q = K = V = I", "perturbed": f"Ṽ = I − ε e₂e₂ᵀ, ε = {p['eps']:g}"}
    theta_c = np.arctan2(pde["centroids"][:, 1], pde["centroids"][:, 0])
    order = np.argsort(theta_c)
    vmax = max(pde["density"].max(), pde["density_perturbed"].max())
    mesh = None
    for j, (flow, dens) in enumerate((("base", pde["density"]),
                                      ("perturbed", pde["density_perturbed"]))):  # fmt: skip
        times, theta = _trajectories(_by(prows, flow=flow))
        ax = axs[0, j]
        for i in range(theta.shape[1]):
            ax.plot(*_theta_lines(times, theta[:, i]), lw=0.8)
        ax.set_title(f"particles, {titles[flow]}", fontsize=10)
        ax.set_ylabel("θ")
        ax = axs[1, j]
        d = np.where(dens[:, order] > 0, dens[:, order], np.nan)
        mesh = ax.pcolormesh(pde["times"], theta_c[order], d.T, shading="nearest",
                             norm=LogNorm(vmin=1e-3, vmax=vmax), cmap="viridis")  # fmt: skip
        for i in range(theta.shape[1]):
            ax.plot(times, theta[:, i], ".", color="w", ms=1.0)
        ax.set_title(f"PDE ({p['cells']} cells), particles as dots", fontsize=10)
        ax.set_ylabel("θ")
        ax.set_xlabel("t (depth)")
        for ax in axs[:2, j]:
            ax.set_ylim(-np.pi, np.pi)
    fig.colorbar(mesh, ax=axs[1, :], label="density", shrink=0.9)
    c = as_columns(crows)
    ax = axs[2, 0]
    ax.plot(c["t"], c["w2_pde_vs_particles_base"], label="base")
    ax.plot(c["t"], c["w2_pde_vs_particles_perturbed"], "--", label="perturbed")
    ax.set_title("W2(PDE, particles)", fontsize=10)
    ax.set_xlabel("t (depth)")
    ax.legend(fontsize=8)
    ax = axs[2, 1]
    ax.plot(c["t"], c["w2_drift_particles"], label="particles")
    ax.plot(c["t"], c["w2_drift_pde"], "--", label="PDE")
    ax.axhline(2 * np.pi / p["cells"], color="0.5", ls=":", lw=1, label="one PDE cell")
    ax.set_title("forgetting: W2(μ_t, ν_t)", fontsize=10)
    ax.set_xlabel("t (depth)")
    ax.legend(fontsize=8)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# 2. Fig 3: phase diagram of the δ-cluster state
# --------------------------------------------------------------------------------------------

PHASE_COLUMNS = ["t_enter", "t_exit", "t_exit_pointmass", "phi0", "final_distance"]


def _phase_check(p: dict) -> None:
    _positive(p, "n", "T", "dt", "delta", "eps_min", "eps_max", "n_eps")
    _require(p, "spheres", all(s in (1, 2, 3) for s in p["spheres"]), "a list of 1, 2 or 3")
    _require(p, "eps_max", p["eps_max"] >= p["eps_min"], ">= eps_min")


def phase_eps(p: dict) -> list[float]:
    return [float(e) for e in np.geomspace(p["eps_min"], p["eps_max"], p["n_eps"])]


def phase_cases(p: dict) -> list[dict]:
    """One case per sphere and ε (ε = 0: the base flow itself)."""
    return [{"sphere": s, "eps": e} for s in p["spheres"] for e in [0.0] + phase_eps(p)]


def _phase_base(p: dict, d: int):
    x0 = sample_particles(Uniform(), p["n"], d, seed=p["seed"])
    key = ("phase-base", d, p["n"], p["seed"], p["T"], p["dt"])
    return x0, _memo(key, lambda: simulate_particles(_identity_model(d), x0, p["T"], dt=p["dt"],
                                                     save_every=p["dt"]))  # fmt: skip


def phase_case(p: dict, case: dict) -> dict:
    """δ-cluster entry/exit times of the flow with ``Ṽ = I − ε e_2e_2ᵀ`` on S^{sphere}.

    C = final positions of the unperturbed run (same ``x0`` for every ε); ``t_exit_pointmass``
    is :func:`point_mass_depth` from the base cluster direction with
    ``Δθ = 2 arcsin(δ/2)`` (the turn at which a point mass leaves the δ-ball)."""
    d = int(case["sphere"]) + 1
    eps = float(case["eps"])
    x0, rb = _phase_base(p, d)
    C = rb.positions[-1]
    if eps == 0:
        r = rb
    else:
        model = _identity_model(d).perturbed(e2_perturbation(d, eps))
        r = simulate_particles(model, x0, p["T"], dt=p["dt"], save_every=p["dt"])
    D = delta_distance(r.positions, C)
    te, tx = crossing_times(r.times, D, p["delta"], strict=True)
    u = cluster_direction(C)
    dtheta = 2 * math.asin(p["delta"] / 2)
    return {
        "t_enter": te,
        "t_exit": tx,
        "t_exit_pointmass": point_mass_depth(u, eps, dtheta) if eps > 0 else float("nan"),
        "phi0": math.asin(min(1.0, abs(u[1]))),
        "final_distance": float(D[-1]),
    }


def phase_fit(rows, sphere) -> dict:
    """Transition curve ``t_exit ≈ c ε^{−α}`` fitted over the ε with a finite exit."""
    sel = [r for r in rows if r["sphere"] == sphere and r["eps"] > 0]
    c = as_columns(sel)
    slope, pref = _loglog_fit(c["eps"], c["t_exit"])
    pm_slope, _ = _loglog_fit(c["eps"], c["t_exit_pointmass"])
    base = _by(rows, sphere=sphere, eps=0.0)[0]
    far = c["t_exit"] >= 3 * base["t_enter"]  # exit well after the clustering (nan: False)
    slope_far, _ = _loglog_fit(c["eps"][far], c["t_exit"][far])
    ratio = c["t_exit"] / c["t_exit_pointmass"]
    return {
        "alpha": -slope, "prefactor": pref, "pointmass_alpha": -pm_slope,
        "alpha_late_exits": -slope_far, "n_late_exits": int(far.sum()),
        "n_points": int(np.isfinite(c["t_exit"]).sum()),
        "base_t_enter": base["t_enter"], "base_t_exit": base["t_exit"],
        "median_ratio_to_pointmass": _nanmedian(ratio),
        "eps": c["eps"], "t_enter": c["t_enter"], "t_exit": c["t_exit"],
    }  # fmt: skip


def run_phase_diagram(p: dict, out, *, comm=None, progress=True, budget=None):
    """Fig 3: ``phase.csv`` (one row per sphere and ε), ``phase_diagram.png``."""
    _phase_check(p)
    out = Path(out)
    prepare_output(out, "phase_diagram", p, comm)
    sw = run_sweep(out / "phase.csv", phase_cases(p), lambda c: phase_case(p, c),
                   key=["sphere", "eps"], columns=PHASE_COLUMNS, comm=comm, progress=progress,
                   budget=budget, desc="phase diagram")  # fmt: skip
    if not sw.complete:
        return None
    fits = {f"S{s}": phase_fit(sw.rows, float(s)) for s in p["spheres"]}
    report = [f"Phase diagram (delta = {p['delta']}, n = {p['n']}, T = {p['T']}): transition "
              f"curve t_exit(eps) = c eps^-alpha"]  # fmt: skip
    for name, f in fits.items():
        report.append(f"  {name}: alpha = {f['alpha']:.3f} (point-mass law: "
                      f"{f['pointmass_alpha']:.3f}), c = {f['prefactor']:.3g}, "
                      f"{f['n_points']} points; alpha = {f['alpha_late_exits']:.3f} over the "
                      f"{f['n_late_exits']} exits later than 3 t_enter(base); "
                      f"base flow t_enter = {f['base_t_enter']:.3g}, "
                      f"t_exit = {f['base_t_exit']:.3g}; median t_exit / point-mass = "
                      f"{f['median_ratio_to_pointmass']:.3f}")  # fmt: skip
        report.append("    eps       t_enter   t_exit")
        for e, a, b in zip(f["eps"], f["t_enter"], f["t_exit"], strict=True):
            report.append(f"    {e:<9.4g} {a:<9.4g} {b:.4g}")
    summary = {"fits": fits, "report": report}
    if comm is None or comm.rank == 0:
        plot_phase_diagram(sw.rows, p, fits, out / "phase_diagram.png")
    _write_summary(out, summary, comm)
    return summary


PHASE_COLOURS = ("#f4a582", "#a6dba0", "#92c5de")
PHASE_NAMES = ("not yet clustered", "no forgetting (δ-close to base)", "forgetting")


def plot_phase_diagram(rows, p: dict, fits: dict, path: Path) -> Path:
    """Three phases over (ε, t), log-log, one panel per sphere."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    spheres = p["spheres"]
    fig = _figure(5.0 * len(spheres), 4.4)
    axs = np.atleast_1d(fig.subplots(1, len(spheres)))
    t_lo = p["dt"]
    tedges = np.geomspace(t_lo, p["T"], 401)
    t = np.sqrt(tedges[:-1] * tedges[1:])
    for ax, s in zip(axs, spheres, strict=True):
        f = fits[f"S{s}"]
        c = as_columns([r for r in rows if r["sphere"] == s and r["eps"] > 0])
        eps, te, tx = c["eps"], c["t_enter"], c["t_exit"]
        le = np.log(eps)
        step = (le[1] - le[0]) if len(le) > 1 else 0.5
        edges = np.exp(np.concatenate([[le[0] - step / 2], (le[1:] + le[:-1]) / 2,
                                       [le[-1] + step / 2]]))  # fmt: skip
        with np.errstate(invalid="ignore"):
            ph = np.where(t[:, None] >= te[None, :], 1, 0)
            ph = np.where(t[:, None] >= tx[None, :], 2, ph)
        ax.pcolormesh(edges, tedges, ph, cmap=ListedColormap(PHASE_COLOURS), vmin=-0.5,
                      vmax=2.5, shading="flat")  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.plot(eps, tx, "ko", ms=3, label="t_exit (measured)")
        ax.plot(eps, te, "k^", ms=3, label="t_enter (measured)")
        ax.plot(eps, c["t_exit_pointmass"], "k--", lw=1, label="point-mass law")
        if np.isfinite(f["alpha"]):
            ax.plot(eps, f["prefactor"] * eps ** (-f["alpha"]), "k:", lw=1.5,
                    label=f"fit ε^(−{f['alpha']:.2f})")  # fmt: skip
        if np.isfinite(f["base_t_enter"]):
            ax.axhline(f["base_t_enter"], color="0.25", ls="-.", lw=1,
                       label="base flow t_enter")  # fmt: skip
        ax.set_ylim(t_lo, p["T"])
        ax.set_xlim(edges[0], edges[-1])
        ax.set_xlabel("perturbation norm ε")
        ax.set_ylabel("time (depth) t")
        ax.set_title(f"S^{s} (d = {s + 1}), n = {p['n']}, δ = {p['delta']}", fontsize=10)
        handles, _ = ax.get_legend_handles_labels()
        patches = [Patch(color=col, label=nm) for col, nm in zip(PHASE_COLOURS, PHASE_NAMES,
                                                                  strict=True)]  # fmt: skip
        ax.legend(handles=patches + handles, fontsize=7, loc="lower left")
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# 3. Thm 4.2: random adapters per layer
# --------------------------------------------------------------------------------------------

RANDOM_COLUMNS = ["eta", "w2", "direction_drift"]


def _random_check(p: dict) -> None:
    _positive(p, "d", "n", "T", "dt", "Ls", "ratio_min", "ratio_max", "n_ratio", "seeds")
    _require(p, "d", p["d"] >= 2, ">= 2")
    _require(p, "ratio_max", p["ratio_max"] >= p["ratio_min"], ">= ratio_min")


def random_ratios(p: dict) -> list[float]:
    return [float(r) for r in np.geomspace(p["ratio_min"], p["ratio_max"], p["n_ratio"])]


def random_cases(p: dict) -> list[dict]:
    """(L, η_L/√L, seed) for every depth, ratio and seed."""
    return [{"L": L, "ratio": r, "seed": s} for L in p["Ls"] for r in random_ratios(p)
            for s in range(p["seeds"])]  # fmt: skip


def _random_base(p: dict):
    d = p["d"]
    x0 = sample_particles(Uniform(), p["n"], d, seed=p["x0_seed"])
    key = ("random-base", d, p["n"], p["x0_seed"], p["T"], p["dt"])
    return x0, _memo(key, lambda: simulate_particles(_identity_model(d), x0, p["T"], dt=p["dt"]))


def random_adapter_case(p: dict, case: dict) -> dict:
    """Final ``W2(μ_T, ν_T)`` with ``ΔV^ℓ = η_L Σ_a s_a u_a^ℓ (v_a^ℓ)ᵀ`` on ``L`` layers of
    length ``h = T/L`` (``η_L = ratio · √L``), base ``Q = K = V = I_d``."""
    L, ratio, seed = int(case["L"]), float(case["ratio"]), int(case["seed"])
    eta = ratio * math.sqrt(L)
    x0, rb = _random_base(p)
    d = p["d"]
    pert = RandomLoRA(d=d, eta=eta, h=p["T"] / L, s=tuple(p["s"]), seed=seed)
    r = simulate_particles(_identity_model(d).perturbed(pert), x0, p["T"], dt=p["dt"])
    xb, xp = rb.positions[-1], r.positions[-1]
    return {
        "eta": eta,
        "w2": _w2(xb, xp),
        "direction_drift": float(_angle(cluster_direction(xb), cluster_direction(xp))),
    }


def random_walk_prediction(p: dict) -> float:
    """Point-mass estimate ``E W2 ≈ k ratio``: the cluster takes ``L`` independent tangent
    steps ``η h P_p u (vᵀp)``, RMS total ``ratio · T · ‖s‖ √(d−1)/d``; ``E|X|/RMS`` of a
    Gaussian in ``d − 1`` dimensions turns it into a mean. Returns ``k``."""
    d = p["d"]
    rms = p["T"] * float(np.linalg.norm(p["s"])) * math.sqrt(d - 1) / d
    mean_over_rms = math.sqrt(2 / (d - 1)) * math.exp(math.lgamma(d / 2) - math.lgamma((d - 1) / 2))
    return rms * mean_over_rms


def random_stats(rows) -> dict:
    """Mean and spread over seeds for every (L, ratio)."""
    out = {}
    for r in rows:
        out.setdefault((r["L"], r["ratio"]), []).append((r["eta"], r["w2"]))
    stats = {}
    for (L, ratio), v in sorted(out.items()):
        w = np.array([x[1] for x in v])
        stats[(L, ratio)] = {"eta": v[0][0], "mean": float(w.mean()),
                             "std": float(w.std(ddof=1)) if len(w) > 1 else 0.0,
                             "min": float(w.min()), "max": float(w.max())}  # fmt: skip
    return stats


def random_collapse(p: dict, stats: dict) -> dict:
    """Per depth, ``mean W2 ≈ c_L · ratio^a`` in the small-drift regime (mean W2 below
    ``linear_max``); collapse = the ``c_L`` agree. Also the spread the same curves would have
    against ``η`` alone (``c_L / √L``), for comparison."""
    Ls = sorted({k[0] for k in stats})
    fits = {}
    for L in Ls:
        pts = [(k[1], s["mean"]) for k, s in stats.items() if k[0] == L
               and s["mean"] < p["linear_max"]]  # fmt: skip
        a, c = _loglog_fit([x[0] for x in pts], [x[1] for x in pts])
        ratios = np.array([x[0] for x in pts])
        cw = float(np.exp(np.mean(np.log([x[1] / x[0] for x in pts])))) if pts else float("nan")
        fits[L] = {"exponent": a, "c": cw, "n": len(ratios)}
    cs = np.array([fits[L]["c"] for L in Ls])
    raw = cs / np.sqrt(np.array(Ls, dtype=float))
    ok = np.isfinite(cs)
    return {
        "fits": fits,
        "spread_vs_ratio": float(cs[ok].max() / cs[ok].min()) if ok.sum() > 1 else float("nan"),
        "spread_vs_eta": float(raw[ok].max() / raw[ok].min()) if ok.sum() > 1 else float("nan"),
        "prediction_c": random_walk_prediction(p),
    }


def run_random_adapters(p: dict, out, *, comm=None, progress=True, budget=None):
    """Thm 4.2: ``random_adapters.csv`` (one row per L, ratio, seed), ``random_adapters.png``."""
    _random_check(p)
    out = Path(out)
    prepare_output(out, "random_adapters", p, comm)
    sw = run_sweep(out / "random_adapters.csv", random_cases(p),
                   lambda c: random_adapter_case(p, c), key=["L", "ratio", "seed"],
                   columns=RANDOM_COLUMNS, comm=comm, progress=progress, budget=budget,
                   desc="random adapters")  # fmt: skip
    if not sw.complete:
        return None
    stats = random_stats(sw.rows)
    col = random_collapse(p, stats)
    report = [
        f"Random adapters (d = {p['d']}, n = {p['n']}, T = {p['T']}, {p['seeds']} seeds): final "
        f"W2 vs eta_L / sqrt(L)",
        "  small-drift fits mean W2 = c_L (eta_L/sqrt L)^a: " + ", ".join(
            f"L={int(L)}: c={f['c']:.3g}, a={f['exponent']:.2f}" for L, f in col["fits"].items()),
        f"  collapse: spread of c_L across L = {col['spread_vs_ratio']:.2f}x against "
        f"eta_L/sqrt(L), vs {col['spread_vs_eta']:.2f}x against eta_L alone; point-mass "
        f"random-walk prediction c = {col['prediction_c']:.3g}",
    ]  # fmt: skip
    summary = {
        "collapse": col,
        "stats": [{"L": k[0], "ratio": k[1], **v} for k, v in stats.items()],
        "report": report,
    }
    if comm is None or comm.rank == 0:
        plot_random_adapters(stats, p, col, out / "random_adapters.png")
    _write_summary(out, summary, comm)
    return summary


def plot_random_adapters(stats: dict, p: dict, col: dict, path: Path) -> Path:
    """Final W2 against η_L (left) and η_L/√L (right), mean ± std over seeds."""
    fig = _figure(10, 4.2)
    axs = fig.subplots(1, 2)
    Ls = sorted({k[0] for k in stats})
    for L in Ls:
        ks = sorted(k for k in stats if k[0] == L)
        r = np.array([k[1] for k in ks])
        eta = np.array([stats[k]["eta"] for k in ks])
        m = np.array([stats[k]["mean"] for k in ks])
        s = np.array([stats[k]["std"] for k in ks])
        for ax, x in zip(axs, (eta, r), strict=True):
            (line,) = ax.plot(x, m, "o-", ms=3, label=f"L = {int(L)}")
            ax.fill_between(x, np.clip(m - s, m * 0.05, None), m + s, color=line.get_color(),
                            alpha=0.2, lw=0)  # fmt: skip
    rr = np.geomspace(p["ratio_min"], p["ratio_max"], 50)
    axs[1].plot(rr, col["prediction_c"] * rr, "k--", lw=1, label="point-mass random walk")
    axs[1].axvline(1.0, color="0.5", lw=0.8, ls=":")
    for ax, xl in zip(axs, ("η_L", "η_L / √L"), strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xl)
        ax.set_ylabel("W2(μ_T, ν_T) (rad)")
        ax.legend(fontsize=8)
    axs[0].set_title("against the adapter norm", fontsize=10)
    axs[1].set_title(f"collapse: spread {col['spread_vs_ratio']:.2f}× (vs "
                     f"{col['spread_vs_eta']:.2f}× against η_L)", fontsize=10)  # fmt: skip
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# 4. Thm 4.6: the critical depth T*
# --------------------------------------------------------------------------------------------

DEPTH_COLUMNS = ["T", "T_star_direction", "T_star_delta", "T_star_pointmass", "phi0"]


def _depth_check(p: dict) -> None:
    _positive(p, "n", "kappa", "eps_min", "eps_max", "n_eps", "delta", "dt", "t_factor", "seeds")
    _require(p, "dims", all(d >= 2 for d in p["dims"]), "a list of dimensions >= 2")
    lo = math.degrees(2 * math.asin(min(1.0, p["delta"] / 2)))
    _require(
        p,
        "theta0_deg",
        all(lo < t < 90 for t in p["theta0_deg"]),
        f"angles in ({lo:.3g}, 90) degrees (above the turn Δθ = 2 arcsin(δ/2))",
    )
    _require(p, "eps_max", p["eps_max"] >= p["eps_min"], ">= eps_min")


def depth_cases(p: dict) -> list[dict]:
    eps = [float(e) for e in np.geomspace(p["eps_min"], p["eps_max"], p["n_eps"])]
    return [{"d": d, "theta0_deg": th, "eps": e, "seed": s} for d in p["dims"]
            for th in p["theta0_deg"] for e in eps for s in range(p["seeds"])]  # fmt: skip


def _depth_centre(d: int, theta0_deg: float) -> np.ndarray:
    c = np.zeros(d)
    th = math.radians(theta0_deg)
    c[0], c[1] = math.cos(th), math.sin(th)
    return c


def depth_case(p: dict, case: dict) -> dict:
    """Critical depth of ``Ṽ = I − ε e_2e_2ᵀ`` from a vMF cloud (κ) centred at angle θ0.

    ``T_star_direction``: first depth at which the cluster directions of the base and the
    perturbed flows are ``Δθ = 2 arcsin(δ/2)`` apart; ``T_star_delta``: exit time of the
    δ-cluster state around the base's final configuration; ``T_star_pointmass``: the
    point-mass law from the base cluster direction. Both crossings are interpolated linearly
    between saved times; the horizon is ``t_factor`` times the a-priori law, plus 10.
    """
    d, eps, seed = int(case["d"]), float(case["eps"]), int(case["seed"])
    centre = _depth_centre(d, float(case["theta0_deg"]))
    dtheta = 2 * math.asin(p["delta"] / 2)
    t0 = point_mass_depth(centre, eps, dtheta)
    dt = min(p["dt"], t0 / 200)
    T = math.ceil((p["t_factor"] * t0 + 10.0) / dt) * dt
    x0 = sample_particles(VonMisesFisher(tuple(centre), p["kappa"]), p["n"], d, seed=seed)
    base = _identity_model(d)
    rb = simulate_particles(base, x0, T, dt=dt, save_every=dt)
    rp = simulate_particles(base.perturbed(e2_perturbation(d, eps)), x0, T, dt=dt, save_every=dt)
    ang = _angle(_directions(rb.positions), _directions(rp.positions))
    _, t_dir = crossing_times(rp.times, ang, dtheta, strict=True)
    D = delta_distance(rp.positions, rb.positions[-1])
    _, t_delta = crossing_times(rp.times, D, p["delta"], strict=True)
    u = cluster_direction(rb.positions[-1])
    return {"T": T, "T_star_direction": t_dir, "T_star_delta": t_delta,
            "T_star_pointmass": point_mass_depth(u, eps, dtheta),
            "phi0": math.asin(min(1.0, abs(u[1])))}  # fmt: skip


def depth_fits(rows) -> dict:
    out = {}
    for d in sorted({r["d"] for r in rows}):
        for th in sorted({r["theta0_deg"] for r in rows}):
            c = as_columns(_by(rows, d=d, theta0_deg=th))
            if not c:
                continue
            a, _ = _loglog_fit(c["eps"], c["T_star_direction"])
            ratio = c["T_star_direction"] / c["T_star_pointmass"]
            ratio_delta = c["T_star_delta"] / c["T_star_pointmass"]
            out[f"d={int(d)},theta0={th:g}"] = {
                "exponent": -a,
                "ratio_median": _nanmedian(ratio),
                "ratio_min": _nanmin(ratio), "ratio_max": _nanmax(ratio),
                "delta_ratio_median": _nanmedian(ratio_delta),
            }  # fmt: skip
    return out


def run_depth(p: dict, out, *, comm=None, progress=True, budget=None):
    """Thm 4.6: ``depth.csv`` (one row per d, θ0, ε, seed), ``depth.png``."""
    _depth_check(p)
    out = Path(out)
    prepare_output(out, "depth", p, comm)
    sw = run_sweep(out / "depth.csv", depth_cases(p), lambda c: depth_case(p, c),
                   key=["d", "theta0_deg", "eps", "seed"], columns=DEPTH_COLUMNS, comm=comm,
                   progress=progress, budget=budget, desc="depth")  # fmt: skip
    if not sw.complete:
        return None
    fits = depth_fits(sw.rows)
    report = [
        f"Depth transition (delta = {p['delta']}, n = {p['n']}, kappa = {p['kappa']}): "
        f"T* = c eps^-alpha vs the point-mass law ln(tan phi0 / tan(phi0 - dtheta))/eps"
    ]
    for k, f in fits.items():
        report.append(f"  {k}: alpha = {f['exponent']:.3f}; T*/law = {f['ratio_median']:.3f} "
                      f"(range {f['ratio_min']:.3f}..{f['ratio_max']:.3f}); delta-exit/law = "
                      f"{f['delta_ratio_median']:.3f}")  # fmt: skip
    summary = {"fits": fits, "report": report}
    if comm is None or comm.rank == 0:
        plot_depth(sw.rows, p, out / "depth.png")
    _write_summary(out, summary, comm)
    return summary


def plot_depth(rows, p: dict, path: Path) -> Path:
    """T* against ε (top) and its ratio to the point-mass law (bottom), one column per d."""
    dims = p["dims"]
    fig = _figure(4.8 * len(dims), 6.0)
    axs = np.array(fig.subplots(2, len(dims), sharex=True, height_ratios=[2, 1])).reshape(2, -1)
    for j, d in enumerate(dims):
        top, bot = axs[0, j], axs[1, j]
        for th in p["theta0_deg"]:
            c = as_columns(_by(rows, d=float(d), theta0_deg=th))
            o = np.argsort(c["eps"], kind="stable")
            eps = c["eps"][o]
            line, = top.plot(eps, c["T_star_pointmass"][o], "-", lw=1,
                             label=f"point-mass law, θ0 = {th:g}°")  # fmt: skip
            top.plot(eps, c["T_star_direction"][o], "o", ms=4, color=line.get_color(),
                     label="measured: cluster direction")  # fmt: skip
            top.plot(eps, c["T_star_delta"][o], "x", ms=5, color=line.get_color(),
                     label="measured: δ-state exit")  # fmt: skip
            bot.plot(eps, (c["T_star_direction"] / c["T_star_pointmass"])[o], "o", ms=3,
                     color=line.get_color())  # fmt: skip
            bot.plot(eps, (c["T_star_delta"] / c["T_star_pointmass"])[o], "x", ms=4,
                     color=line.get_color())  # fmt: skip
        top.set_xscale("log")
        top.set_yscale("log")
        top.set_ylabel("critical depth T*")
        top.set_title(f"d = {d}, Ṽ = I − ε e₂e₂ᵀ, Δθ = 2 arcsin(δ/2)", fontsize=10)
        top.legend(fontsize=7)
        bot.axhline(1.0, color="k", lw=0.8)
        bot.set_ylabel("T* / law")
        bot.set_xlabel("perturbation norm ε")
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# 5. tied vs random vs orthogonal vs aligned LoRA
# --------------------------------------------------------------------------------------------

KIND_COLUMNS = ["t", "w2", "direction_drift"]
KINDS = ("tied", "random", "orthogonal", "aligned")


def _kinds_check(p: dict) -> None:
    _positive(p, "n", "kappa", "T", "dt", "save_every", "eps", "seeds", "layer_length", "rank")
    v = p["V_diag"]
    ok = len(v) >= 2 and bool(np.all(np.diff(v) <= 0)) and v[-1] >= 0 and v[0] > v[1]
    _require(p, "V_diag", ok, "non-negative, decreasing, with v[0] > v[1] (a gap)")
    _require(p, "kinds", all(k in KINDS for k in p["kinds"]), f"a list of {KINDS}")


def kinds_cases(p: dict) -> list[dict]:
    """Every kind, norm and seed (``aligned`` is deterministic: seed 0 only)."""
    return [{"kind": k, "eps": e, "seed": s} for k in p["kinds"] for e in p["eps"]
            for s in range(1 if k == "aligned" else p["seeds"])]  # fmt: skip


def _scaled(M: np.ndarray, eps: float) -> np.ndarray:
    return eps * M / np.linalg.norm(M, 2)


def lora_kind_perturbation(p: dict, kind: str, eps: float, seed: int):
    """The perturbation of one kind, operator norm ``ε`` (every layer, for ``random``).

    ``V = diag(V_diag)``, eigenvectors ``u_j = e_j``; LoRA factors ``B, A ∈ R^{d×r}`` with
    i.i.d. N(0, 1) entries from ``default_rng([seed, ...])``:
    tied ``B Aᵀ``; random: a new ``B_ℓ A_ℓᵀ`` on every layer of length ``layer_length``;
    orthogonal ``P_⊥ B Aᵀ P_⊥`` (``P_⊥ = I − u_1u_1ᵀ``); aligned ``u_2 u_1ᵀ`` (the pair with
    the smallest gap ``λ1 − λ2``); each scaled to norm ``ε``.
    """
    d, r = len(p["V_diag"]), p["rank"]
    zero = np.zeros((d, d))

    def draw(*tag):
        g = np.random.default_rng([seed, *tag])
        return g.normal(size=(d, r)) @ g.normal(size=(d, r)).T

    if kind == "tied":
        return TiedLoRA(zero, _scaled(draw(0), eps))
    if kind == "orthogonal":
        P = np.eye(d) - np.outer(np.eye(d)[0], np.eye(d)[0])
        return TiedLoRA(zero, _scaled(P @ draw(0) @ P, eps))
    if kind == "aligned":
        return TiedLoRA(zero, eps * np.outer(np.eye(d)[1], np.eye(d)[0]))
    h = p["layer_length"]
    cache: dict = {}

    def fn(t):
        ell = int(math.floor(t / h + 1e-12))
        if ell not in cache:
            cache[ell] = _scaled(draw(1, ell), eps)
        return zero, cache[ell]

    return ScheduledLoRA(d, fn, jumps=tuple(h * np.arange(1, math.ceil(p["T"] / h))))


def _kinds_x0(p: dict) -> np.ndarray:
    """vMF cloud around (1, ..., 1)/√d, reflected into the half-space <x, u_1> > 0
    (the assumption of Prop 3.3)."""
    d = len(p["V_diag"])
    x = sample_particles(VonMisesFisher(tuple(np.ones(d) / math.sqrt(d)), p["kappa"]), p["n"], d,
                         seed=p["x0_seed"])  # fmt: skip
    x[:, 0] = np.abs(x[:, 0])
    return x


def _kinds_base_model(p: dict) -> Model:
    V = np.diag(p["V_diag"])
    return Model.from_AV(V, V)


def lora_kind_case(p: dict, case: dict) -> list[dict]:
    """``W2(μ_t, ν_t)`` and ``|u(t) − ũ(t)|`` (cluster directions) at the saved times."""
    x0 = _kinds_x0(p)
    base = _kinds_base_model(p)
    key = ("kinds-base", tuple(p["V_diag"]), p["n"], p["kappa"], p["x0_seed"], p["T"], p["dt"],
           p["save_every"])  # fmt: skip
    rb = _memo(key, lambda: simulate_particles(base, x0, p["T"], dt=p["dt"],
                                               save_every=p["save_every"]))  # fmt: skip
    pert = lora_kind_perturbation(p, case["kind"], float(case["eps"]), int(case["seed"]))
    rp = simulate_particles(base.perturbed(pert), x0, p["T"], dt=p["dt"],
                            save_every=p["save_every"])  # fmt: skip
    ub, up = _directions(rb.positions), _directions(rp.positions)
    return [{"t": float(t), "w2": _w2(a, b), "direction_drift": float(np.linalg.norm(u - v))}
            for t, a, b, u, v in zip(rp.times, rb.positions, rp.positions, ub, up,
                                     strict=True)]  # fmt: skip


def kinds_table(p: dict, rows) -> list[dict]:
    """Final W2 and drift per (kind, ε): mean, min, max over seeds, with the Prop 3.3
    prediction ``|u_1 − ũ_1|`` (mean over seeds; not for ``random``)."""
    T = max(r["t"] for r in rows)
    table = []
    for k in p["kinds"]:
        for e in p["eps"]:
            fin = [r for r in rows if r["kind"] == k and r["eps"] == e and r["t"] == T]
            w = np.array([r["w2"] for r in fin])
            dr = np.array([r["direction_drift"] for r in fin])
            pred, stable = float("nan"), None
            if k != "random":
                crit = [spectral_criterion(np.diag(p["V_diag"]),
                                           lora_kind_perturbation(p, k, e, int(r["seed"])).dV)
                        for r in fin]  # fmt: skip
                pred = _nanmean([c.predicted_drift for c in crit])
                stable = all(c.stable for c in crit)
            table.append({"kind": k, "eps": e, "w2_mean": float(w.mean()),
                          "w2_min": float(w.min()), "w2_max": float(w.max()),
                          "drift_mean": float(dr.mean()), "predicted_drift": pred,
                          "prop33_stable": stable})  # fmt: skip
    return table


def run_lora_kinds(p: dict, out, *, comm=None, progress=True, budget=None):
    """LoRA kinds: ``lora_kinds.csv`` (rows per kind, ε, seed, t), ``lora_kinds.png``."""
    _kinds_check(p)
    out = Path(out)
    prepare_output(out, "lora_kinds", p, comm)
    sw = run_sweep(out / "lora_kinds.csv", kinds_cases(p), lambda c: lora_kind_case(p, c),
                   key=["kind", "eps", "seed"], columns=KIND_COLUMNS, comm=comm,
                   progress=progress, budget=budget, desc="LoRA kinds")  # fmt: skip
    if not sw.complete:
        return None
    table = kinds_table(p, sw.rows)
    lam = p["V_diag"]
    report = [
        f"LoRA kinds (V = A = diag{tuple(lam)}, gap = {lam[0] - lam[1]:g}, n = {p['n']}, "
        f"T = {p['T']}): final W2 and cluster drift |u1 - u1~|, same norm ||dV|| = eps",
        "  kind        eps     W2 mean [min, max]         drift   Prop 3.3: drift stable",
    ]
    for r in table:
        st = {None: "-", True: "yes", False: "no"}[r["prop33_stable"]]
        report.append(
            f"  {r['kind']:<11} {r['eps']:<7g} {r['w2_mean']:.4f} [{r['w2_min']:.4f}, "
            f"{r['w2_max']:.4f}]  {r['drift_mean']:.4f}  {r['predicted_drift']:.4f}"
            f"  {st}"
        )
    summary = {"table": table, "report": report}
    if comm is None or comm.rank == 0:
        plot_lora_kinds(sw.rows, p, table, out / "lora_kinds.png")
    _write_summary(out, summary, comm)
    return summary


def plot_lora_kinds(rows, p: dict, table, path: Path) -> Path:
    """W2 (top) and cluster drift (bottom) over time per kind; mean and min-max band."""
    eps_list = p["eps"]
    fig = _figure(4.8 * len(eps_list), 6.4)
    axs = np.array(fig.subplots(2, len(eps_list), sharex=True)).reshape(2, -1)
    for j, e in enumerate(eps_list):
        for k in p["kinds"]:
            sel = [r for r in rows if r["kind"] == k and r["eps"] == e]
            seeds = sorted({r["seed"] for r in sel})
            for i, col in enumerate(("w2", "direction_drift")):
                ax = axs[i, j]
                ys = np.array([[r[col] for r in sel if r["seed"] == s] for s in seeds])
                t = np.array([r["t"] for r in sel if r["seed"] == seeds[0]])
                (line,) = ax.plot(t, ys.mean(0), label=k)
                if len(seeds) > 1:
                    ax.fill_between(t, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.2,
                                    lw=0)  # fmt: skip
                pred = [r["predicted_drift"] for r in table if r["kind"] == k and r["eps"] == e]
                if i == 1 and pred and np.isfinite(pred[0]):
                    ax.axhline(pred[0], color=line.get_color(), ls=":", lw=1)
        axs[0, j].set_title(f"‖ΔV‖ = ε = {e:g}", fontsize=10)
        axs[0, j].set_ylabel("W2(μ_t, ν_t)")
        axs[1, j].set_ylabel("|u(t) − ũ(t)|  (dotted: Prop 3.3)")
        axs[1, j].set_xlabel("t (depth)")
        axs[0, j].legend(fontsize=8)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# 6. Fig 4: two-point clustering with Q̃ = K̃ = e1e1ᵀ
# --------------------------------------------------------------------------------------------

CLUSTER_COLUMNS = ["t", "n_clusters", "mass1", "mass2", "x1_1", "x1_2"]


def _clusters_check(p: dict) -> None:
    _positive(p, "n", "T", "dt", "save_every", "seeds", "betas", "radius")
    _require(p, "plot_seed", 0 <= p["plot_seed"] < p["seeds"], "in [0, seeds)")


def cluster_models(p: dict) -> list[dict]:
    """``identity`` (Q = K = I, the base) and ``e1e1`` (Q = K = √β e_1e_1ᵀ) per β."""
    return [{"model": "identity", "beta": 1.0}] + [{"model": "e1e1", "beta": b}
                                                   for b in p["betas"]]  # fmt: skip


def _cluster_run(p: dict, model: str, beta: float, seed: int):
    def go():
        s = math.sqrt(beta)
        M = np.eye(2) if model == "identity" else np.diag([1.0, 0.0])
        x0 = sample_particles(Uniform(), p["n"], 2, seed=seed)
        return simulate_particles(Model(s * M, s * M, np.eye(2)), x0, p["T"], dt=p["dt"],
                                  save_every=p["save_every"])  # fmt: skip

    return _memo(("clusters", model, beta, seed, p["n"], p["T"], p["dt"], p["save_every"]), go)


def two_cluster_case(p: dict, case: dict) -> list[dict]:
    """Number of clusters (quick shift, geodesic radius) over time; the two heaviest
    clusters' masses and first coordinates."""
    r = _cluster_run(p, case["model"], float(case["beta"]), int(case["seed"]))
    rows = []
    for t, x in zip(r.times, r.positions, strict=True):
        cl = find_clusters(x, radius=p["radius"])
        m = list(cl.masses[:2]) + [0.0] * (2 - min(2, len(cl)))
        x1 = list(cl.centres[:2, 0]) + [float("nan")] * (2 - min(2, len(cl)))
        rows.append(
            {
                "t": float(t),
                "n_clusters": len(cl),
                "mass1": float(m[0]),
                "mass2": float(m[1]),
                "x1_1": float(x1[0]),
                "x1_2": float(x1[1]),
            }
        )
    return rows


def two_cluster_summary(p: dict, rows) -> dict:
    T = max(r["t"] for r in rows)
    out = {}
    for m in cluster_models(p):
        fin = [r for r in rows if r["model"] == m["model"] and r["beta"] == m["beta"]
               and r["t"] == T]  # fmt: skip
        n = np.array([r["n_clusters"] for r in fin])
        two = [r for r in fin if r["n_clusters"] == 2]
        out[f"{m['model']} beta={m['beta']:g}"] = {
            "fraction_one": float(np.mean(n == 1)), "fraction_two": float(np.mean(n == 2)),
            "mean_clusters": float(n.mean()),
            "min_abs_x1_two": float(min((min(abs(r["x1_1"]), abs(r["x1_2"])) for r in two),
                                        default=float("nan"))),
        }  # fmt: skip
    return out


def run_two_clusters(p: dict, out, *, comm=None, progress=True, budget=None):
    """Fig 4: ``clusters.csv`` (cluster counts over time, every seed), ``trajectories.csv``
    (the plotted seed), ``two_clusters.png``."""
    _clusters_check(p)
    out = Path(out)
    prepare_output(out, "two_clusters", p, comm)
    budget = budget or Budget()
    cases = [{**m, "seed": s} for m in cluster_models(p) for s in range(p["seeds"])]
    sw = run_sweep(out / "clusters.csv", cases, lambda c: two_cluster_case(p, c),
                   key=["model", "beta", "seed"], columns=CLUSTER_COLUMNS, comm=comm,
                   progress=progress, budget=budget, desc="two clusters")  # fmt: skip
    if not sw.complete:
        return None

    def traj(case):
        return _trajectory_rows(_cluster_run(p, case["model"], float(case["beta"]),
                                             p["plot_seed"]))  # fmt: skip

    tw = run_sweep(out / "trajectories.csv", cluster_models(p), traj, key=["model", "beta"],
                   columns=FIG2_PARTICLE_COLUMNS, comm=comm, progress=False,
                   budget=budget)  # fmt: skip
    if not tw.complete:
        return None
    stats = two_cluster_summary(p, sw.rows)
    report = [
        f"Two-point clustering (d = 2, n = {p['n']}, T = {p['T']}, {p['seeds']} initial "
        f"conditions): clusters at T (quick shift, radius {p['radius']})"
    ]
    for k, s in stats.items():
        report.append(f"  {k:<18} 1 cluster: {s['fraction_one']:.2f}, 2 clusters: "
                      f"{s['fraction_two']:.2f}, min |x1| of two-cluster centres: "
                      f"{s['min_abs_x1_two']:.3f}")  # fmt: skip
    summary = {"models": stats, "report": report}
    if comm is None or comm.rank == 0:
        plot_two_clusters(sw.rows, tw.rows, p, out / "two_clusters.png")
    _write_summary(out, summary, comm)
    return summary


def plot_two_clusters(crows, trows, p: dict, path: Path) -> Path:
    """Trajectories of the plotted seed per model (top); mean cluster count (bottom)."""
    models = cluster_models(p)
    fig = _figure(3.6 * len(models), 6.0)
    gs = fig.add_gridspec(2, len(models), height_ratios=[1.4, 1])
    for j, m in enumerate(models):
        ax = fig.add_subplot(gs[0, j])
        times, theta = _trajectories(_by(trows, model=m["model"], beta=m["beta"]))
        theta = np.mod(theta + np.pi / 2, 2 * np.pi) - np.pi / 2  # ±e1 well inside the range
        for i in range(theta.shape[1]):
            ax.plot(*_theta_lines(times, theta[:, i]), lw=0.8)
        ax.set_xscale("log")
        name = "Q = K = I" if m["model"] == "identity" else \
            f"Q̃ = K̃ = {math.sqrt(m['beta']):g} e₁e₁ᵀ"  # fmt: skip
        ax.set_title(f"{name}, V = I", fontsize=10)
        ax.set_ylim(-np.pi / 2, 3 * np.pi / 2)
        ax.set_yticks([-np.pi / 2, 0, np.pi / 2, np.pi, 3 * np.pi / 2],
                      ["−π/2", "0 (e₁)", "π/2", "π (−e₁)", "3π/2"])  # fmt: skip
        ax.set_xlabel("t (depth)")
        if j == 0:
            ax.set_ylabel(f"θ (seed {p['plot_seed']})")
    ax = fig.add_subplot(gs[1, :])
    for m in models:
        sel = [r for r in crows if r["model"] == m["model"] and r["beta"] == m["beta"]]
        c = as_columns(sel)
        times = np.unique(c["t"])
        counts = c["n_clusters"].reshape(-1, len(times))
        lab = "Q = K = I" if m["model"] == "identity" else f"e₁e₁ᵀ, β = {m['beta']:g}"
        ax.plot(times, counts.mean(0), label=f"{lab} (mean of {counts.shape[0]})")
    ax.axhline(2, color="0.5", ls=":", lw=0.8)
    ax.set_yscale("log")
    ax.set_xscale("log")
    ax.set_xlabel("t (depth)")
    ax.set_ylabel("number of clusters")
    ax.legend(fontsize=8)
    return _save(fig, path)


def load_presets(name: str) -> dict:
    """The ``PRESETS`` dict of ``scripts/exp_<name>.py`` (next to the solver package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "scripts" / f"exp_{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"no experiment script {path}")
    spec = importlib.util.spec_from_file_location(f"exp_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PRESETS
