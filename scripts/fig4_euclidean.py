"""Fig 4 of arXiv 2402.15415 in the authors' own model beside the sphere: Q~ = K~ = e1 e1^T,
V = I_2, n = 20 tokens, 8 seeds.

Three geometries from the same draws (z0 uniform in [-1, 1]^2; on the sphere z0/|z0|):
"euclidean-rescaled" (the time-rescaled Euclidean model of the authors' public code:
P_ij ~ exp<Q e^{tV} z_i, K e^{tV} z_j>, so the softmax becomes a hardmax: each token follows
the extreme token on its side of the hyperplane z_1 = 0, and the clusters that form are
fixed points), "euclidean" (the static model: one cluster), and "sphere" (S^1). For each seed
the number of distinct final points (closer than `radius` counts as one) and, for the
rescaled model, the largest move between T and 2T (a stable pair does not move). Writes
docs/figures/two_clusters_euclidean.png (or --output) and prints one line per seed.

    .venv/bin/python scripts/fig4_euclidean.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from solver.experiments._figures import figure, save_png
from solver.model import Model
from solver.particles import simulate_particles

GEOMETRIES = ("euclidean-rescaled", "euclidean", "sphere")
HORIZON = {"euclidean-rescaled": 10.0, "euclidean": 15.0, "sphere": 30.0}


def distinct(z: np.ndarray, radius: float) -> np.ndarray:
    """The distinct points of ``z`` (rows), points within ``radius`` of a kept one merged."""
    pts: list[np.ndarray] = []
    for p in z:
        if not any(np.linalg.norm(p - q) < radius for q in pts):
            pts.append(p)
    return np.array(pts)


def fig4_runs(seeds: int = 8, n: int = 20, dt: float = 0.02, radius: float = 1e-2) -> list[dict]:
    """One dict per seed and geometry: ``points`` (the distinct final points), ``move`` (the
    largest token move between ``T`` and ``2T``), ``traj`` (positions at the saved times)."""
    E, eye = np.diag([1.0, 0.0]), np.eye(2)
    model = Model(E, E, eye)
    out = []
    for seed in range(seeds):
        z0 = np.random.default_rng(seed).uniform(-1, 1, size=(n, 2))
        for geo in GEOMETRIES:
            x0 = z0 / np.linalg.norm(z0, axis=1, keepdims=True) if geo == "sphere" else z0
            T = HORIZON[geo]
            r = simulate_particles(model, x0, 2 * T, dt=dt, save_every=T / 50, geometry=geo)
            k = int(np.argmin(np.abs(r.times - T)))
            move = float(np.linalg.norm(r.positions[-1] - r.positions[k], axis=1).max())
            out.append({"seed": seed, "geometry": geo, "points": distinct(r.positions[k], radius),
                        "move": move, "traj": r.positions[: k + 1]})  # fmt: skip
    return out


def plot(runs: list[dict], path: Path, seed: int = 0) -> Path:
    fig = figure(14, 4.4)
    axs = fig.subplots(1, 4)
    for ax, geo in zip(axs[:3], GEOMETRIES, strict=True):
        r = next(x for x in runs if x["seed"] == seed and x["geometry"] == geo)
        tr = r["traj"]
        for i in range(tr.shape[1]):
            ax.plot(tr[:, i, 0], tr[:, i, 1], "-", lw=0.6, color="0.5")
        ax.plot(tr[0, :, 0], tr[0, :, 1], "o", ms=3, color="tab:blue", label="t = 0")
        ax.plot(r["points"][:, 0], r["points"][:, 1], "*", ms=12, color="tab:red",
                label=f"t = T: {len(r['points'])} point(s)")  # fmt: skip
        ax.set_aspect("equal")
        ax.set_title(f"{geo} (T = {HORIZON[geo]:g}), seed {seed}", fontsize=9)
        ax.legend(fontsize=7)
    counts = {g: [len(x["points"]) for x in runs if x["geometry"] == g] for g in GEOMETRIES}
    for k, g in enumerate(GEOMETRIES):
        c = counts[g]
        axs[3].plot(np.arange(len(c)) + 0.1 * k, c, "o", label=g)
    axs[3].set(xlabel="seed", ylabel="distinct final points", yticks=[1, 2, 3])
    axs[3].legend(fontsize=7)
    fig.suptitle("Fig 4: Q̃ = K̃ = e₁e₁ᵀ, V = I₂, n = 20, z₀ uniform in [−1, 1]² (sphere: z₀/|z₀|)"
                 ": the authors' time-rescaled Euclidean model beside the static one and S¹",
                 fontsize=9)  # fmt: skip
    return save_png(fig, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", type=Path, default=Path("docs/figures/two_clusters_euclidean.png"))
    ap.add_argument("--seeds", type=int, default=8)
    a = ap.parse_args(argv)
    if a.seeds < 1:
        print("error: --seeds must be >= 1", file=sys.stderr)
        return 2
    runs = fig4_runs(a.seeds)
    for r in runs:
        print(f"seed {r['seed']} {r['geometry']:<19} {len(r['points'])} point(s), "
              f"move T..2T {r['move']:.2e}")  # fmt: skip
    plot(runs, a.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
