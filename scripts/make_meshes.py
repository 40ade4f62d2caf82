"""Write the ready-made sphere meshes of meshes/ (XDMF + HDF5, readable by DOLFINx/ParaView).

    python scripts/make_meshes.py [--out meshes] [--max-level 5]

Writes ``icosphere_L.xdmf`` for levels 0..max-level (20 * 4^L triangles, vertices exactly on
the unit sphere) and ``circle_N.xdmf`` for N = 64, 256, 1024 segments. Serial, ~5 s.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mpi4py import MPI

import solver


def main() -> None:
    from dolfinx import io  # after `import solver`, which loads DOLFINx's MPI first

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "meshes")
    p.add_argument("--max-level", type=int, default=5)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(2, {"refinement": k}, f"icosphere_{k}") for k in range(args.max_level + 1)]
    jobs += [(1, {"cells": n}, f"circle_{n}") for n in (64, 256, 1024)]
    for sphere, kw, name in jobs:
        sm = solver.sphere_mesh(MPI.COMM_SELF, sphere, **kw)
        sm.mesh.name = "mesh"
        with io.XDMFFile(MPI.COMM_SELF, str(args.out / f"{name}.xdmf"), "w") as f:
            f.write_mesh(sm.mesh)
        print(f"{name}.xdmf: {sm.num_cells} cells")


if __name__ == "__main__":
    solver.parallel.abort_on_error()
    main()
