"""A Gmsh mesh of the unit sphere that a user brings loads; one of another sphere is rejected."""

import numpy as np
import pytest
from mpi4py import MPI

import solver

try:  # gmsh's wheel loads libgmsh (and libGLU, libXcursor, ...) at import: OSError if missing
    gmsh = pytest.importorskip("gmsh")
except OSError as e:
    pytest.skip(f"gmsh is installed but its system libraries are missing: {e}",
                allow_module_level=True)  # fmt: skip


def make_sphere(path, radius, size=0.35):
    gmsh.initialize()
    try:
        gmsh.option.setNumber("General.Terminal", 0)
        gmsh.model.add("sphere")
        s = gmsh.model.occ.addSphere(0, 0, 0, radius)
        gmsh.model.occ.synchronize()
        surf = [abs(t) for _, t in gmsh.model.getBoundary([(3, s)])]
        gmsh.model.addPhysicalGroup(2, surf, 1)
        gmsh.option.setNumber("Mesh.MeshSizeMax", size * radius)
        gmsh.model.mesh.generate(2)
        gmsh.write(str(path))
    finally:
        gmsh.finalize()


def test_gmsh_sphere_loads_and_runs(tmp_path):
    make_sphere(tmp_path / "s.msh", 1.0)
    sm = solver.load_mesh(MPI.COMM_WORLD, tmp_path / "s.msh")
    assert sm.gdim == 3 and sm.num_cells > 100
    area = sm.integrate(np.ones(sm.num_owned))
    assert 0.95 * 4 * np.pi < area < 4 * np.pi
    model = solver.Model(np.eye(3), np.eye(3), np.eye(3))
    res = solver.evolve(sm, model, solver.VonMisesFisher((0, 0, 1.0), 2.0), 0.3, progress=False)
    assert np.abs(res.column("mass") - 1).max() < 1e-12


def test_gmsh_sphere_of_radius_two_is_rejected(tmp_path):
    make_sphere(tmp_path / "big.msh", 2.0)
    with pytest.raises(ValueError, match="not a mesh of the unit sphere"):
        solver.load_mesh(MPI.COMM_WORLD, tmp_path / "big.msh")
    sm = solver.load_mesh(MPI.COMM_WORLD, tmp_path / "big.msh", project=True)
    x = sm.mesh.geometry.x
    assert np.abs(np.linalg.norm(x, axis=1) - 1).max() < 1e-14
