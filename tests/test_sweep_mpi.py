"""A sweep with fewer PDE cases than ranks finishes under mpiexec (it used to hang).

The first import of DOLFINx initialises PETSc, collectively over ``COMM_WORLD``; with the
package's lazy imports the rank that took the only PDE case built the first mesh alone and
waited there for a rank that never would (``solver/experiments/_sweep.py``, ``_import_dolfinx``).
"""

import pytest
from mpi4py import MPI


@pytest.mark.mpi
def test_one_pde_case_on_two_ranks(tmp_path, run):
    if MPI.COMM_WORLD.size > 1:
        pytest.skip("launches mpiexec itself: run it from a single-rank pytest")
    cfg = tmp_path / "one.toml"
    cfg.write_text('kinds = ["tied"]\nn_eps = 1\n')
    p = run(["scripts/exp_depth.py", "--preset", "tiny", "--config", str(cfg), "--no-progress",
             "--output", str(tmp_path / "out")], 2, timeout=180)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "out" / "summary.json").exists()
