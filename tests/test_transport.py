"""DG0 upwind transport on meshed spheres: conservation, positivity, convergence, exactness."""

import numpy as np
import pytest
from mpi4py import MPI

import solver
from solver.analysis import poisson_kernel, poisson_radius
from solver.run import initial_cell_averages
from solver.transport import DG0Upwind

COMM = MPI.COMM_WORLD


@pytest.mark.parametrize("flux", ["facet", "donor"])
@pytest.mark.parametrize("sphere,kw", [(1, {"cells": 45}), (2, {"refinement": 2})])
def test_facet_flux_equals_dolfinx_assembly(sphere, kw, flux):
    """The NumPy facet evaluation of the DG0 flux form is DOLFINx's assembly of that form."""
    sm = solver.sphere_mesh(COMM, sphere, **kw)
    op = DG0Upwind(sm, flux)
    assert op._fv is not None  # affine mesh: the facet path is the one in use
    rng = np.random.default_rng(5)
    for _ in range(3):  # both signs of u_n on many facets, densities with jumps
        u = rng.normal(size=(op.num_targets, sm.gdim))  # per target
        rho = rng.random(sm.num_owned) * (rng.random(sm.num_owned) < 0.7)
        ref = op.assemble_rhs(u, rho)
        got = op.rhs(u, rho)
        # the same sums, up to the order of the floating-point operations
        assert np.abs(got - ref).max() <= 1e-13 * np.abs(ref).max()
        assert abs(sm.integrate(got)) <= 1e-13 * sm.integrate(np.abs(got))


@pytest.mark.parametrize(
    "sphere,kw,d",
    [(1, {"cells": 90}, 2), (2, {"refinement": 2}, 3)],
)
def test_mass_conserved_to_roundoff_and_positive(sphere, kw, d):
    sm = solver.sphere_mesh(COMM, sphere, **kw)
    rng = np.random.default_rng(3)
    Q, K, V = 2 * np.eye(d), np.eye(d), np.eye(d) + 0.3 * rng.normal(size=(d, d))
    base = solver.Model(Q, K, V)
    pert = base.perturbed(solver.RandomLoRA(d=d, eta=0.5, h=0.2, seed=1))
    init = solver.VonMisesFisher(tuple(np.eye(d)[0]), 5.0)
    res = solver.evolve(sm, base, init, 1.0, perturbed=pert, cfl=0.9, progress=False)
    for name in ("mass", "mass_perturbed"):
        assert np.abs(res.column(name) - 1.0).max() <= 1e-12
    assert res.column("min").min() >= 0.0 and res.column("min_perturbed").min() >= 0.0
    # the flows really moved and really differ
    assert res.column("max")[-1] > 1.5 * res.column("max")[0]
    assert res.column("l1_difference")[-1] > 1e-3


def s1_exact_error(cells, r0=0.5, T=2.0):
    sm = solver.sphere_mesh(COMM, 1, cells=cells)
    model = solver.Model(np.zeros((2, 2)), np.zeros((2, 2)), np.eye(2))
    res = solver.evolve(sm, model, poisson_kernel(r0), T, cfl=0.5, progress=False)
    exact = initial_cell_averages(sm, poisson_kernel(poisson_radius(r0, T)))
    rho = sm.scatter(COMM.bcast(res.density[-1] if COMM.rank == 0 else None))
    return sm.integrate(np.abs(rho - exact)), 2 * np.pi / cells


class TestExactS1:
    """Uniform attention on S^1: the Poisson-kernel family is invariant (model.md)."""

    expected_rate = 0.9  # first-order upwind: L1 error O(h)
    #: this solution collapses towards its attractor (r -> 1), and the cluster weight's
    #: thresholds widen as h^{1/2} (transport/_dg0.py): the coarse meshes gain most from the
    #: correction, so the rate is pre-asymptotic there. Measured 2026-12-08, L1 at 256 / 512 /
    #: 1,024 / 2,048 cells: 0.02892 / 0.01636 / 0.00876 / 0.00447 (successive 0.82, 0.90, 0.97;
    #: with fixed thresholds 0.0333 / 0.0174 / 0.00885 / 0.00447), so the fit starts at 512
    cells = (512, 1024, 2048)

    def test_l1_convergence_order(self):
        errs, hs = zip(*(s1_exact_error(n) for n in self.cells), strict=True)
        rate = np.polyfit(np.log(hs), np.log(errs), 1)[0]
        print(f"S^1 exact solution, L1 errors {errs}, fitted order {rate:.3f}")
        assert rate >= self.expected_rate
        assert errs[-1] < 0.05


def rotation_error(level, revolutions=1.0):
    sm = solver.sphere_mesh(COMM, 2, refinement=level)
    axis = solver.normalize(np.array([0.2, -0.3, 1.0]))
    omega = 2 * np.pi

    def u(x, t):
        return omega * np.cross(axis, x)

    bump = solver.VonMisesFisher((1.0, 0.0, 0.0), 4.0)
    res = solver.evolve(sm, None, bump, revolutions, velocity=u, speed=omega, cfl=0.8,
                        progress=False)  # fmt: skip
    rho0 = initial_cell_averages(sm, bump)
    rho = sm.scatter(COMM.bcast(res.density[-1] if COMM.rank == 0 else None))
    mass_err = np.abs(res.column("mass") - 1).max()
    return sm.integrate(np.abs(rho - rho0)) / sm.integrate(rho0), mass_err, res.column("min").min()


def test_solid_body_rotation_converges():
    out = [rotation_error(level) for level in (2, 3, 4)]
    errs = [e for e, _, _ in out]
    print("solid-body rotation, relative L1 errors after one revolution:", errs)
    assert errs[0] > errs[1] > errs[2]
    # first order: halving h should cut the error by ~2 asymptotically; demand at least 1.4
    assert errs[1] / errs[2] > 1.4
    assert all(m <= 1e-12 for _, m, _ in out) and all(lo >= 0 for _, _, lo in out)


@pytest.mark.parametrize("sphere,kw", [(1, {"cells": 64}), (2, {"refinement": 3})])
def test_compiled_directional_velocity_is_the_numpy_one(sphere, kw):
    """The compiled ``a_K`` against the NumPy reference: the same sums in another order, so
    equal to round-off of ``|u|``, on smooth, random and partly zero velocities (``E_K = 0``:
    ``a_K = 0`` in both)."""
    from solver.transport._dg0 import cell_stencil, directional_velocity
    from solver.transport._dg0 import directional_velocity_numpy as reference

    sm = solver.sphere_mesh(COMM, sphere, **kw)
    st = cell_stencil(sm)
    cen = st["cen"]
    rng = np.random.default_rng(sphere)
    smooth = np.zeros_like(cen)
    smooth[:, 1] = 1.0
    for u in (smooth, rng.normal(size=cen.shape), np.where(cen[:, :1] > 0.3, smooth, 0.0)):
        u = u - np.einsum("ij,ij->i", u, cen)[:, None] * cen  # tangent, as the solver's
        ref, out = reference(u, st), directional_velocity(u, st)
        assert out.shape == ref.shape == (sm.num_owned, sm.gdim)
        assert np.abs(ref).max() > 1e-3  # not all zero
        assert np.abs(out - ref).max() <= 1e-12 * np.abs(u).max()


def test_compiled_cluster_weight_is_the_numpy_one():
    """The compiled cluster weight ``w_K`` against the NumPy reference, bit for bit (the same
    operations per cell), on a density with smooth, clustered, empty and partly empty cells,
    so that every branch (0, 1, in between, ``ρ_K = 0``) is taken."""
    from solver.transport import _dg0
    from solver.transport._dg0 import cell_stencil, cluster_scale, cluster_weight

    if _dg0._nb is None:
        pytest.skip("numba not installed")
    sm = solver.sphere_mesh(COMM, 2, refinement=4)  # h < 0.08: the widened thresholds
    st = cell_stencil(sm)
    cen = st["cen"]
    rng = np.random.default_rng(3)
    nloc = len(cen)
    rho = np.exp(4 * cen[:, 0]) * (1 + 0.3 * rng.random(nloc)) * (cen[:, 2] > -0.5)
    rho[rng.random(nloc) < 0.05] *= 1e3  # spikes: weight 1 around them
    scale = cluster_scale(sm.areas, sm.gdim)
    ref = _dg0.cluster_weight_numpy(rho, st["nbr"], scale)
    out = cluster_weight(rho, st["nbr"], scale)
    np.testing.assert_array_equal(out, ref)
    inner = (ref > 0) & (ref < 1)
    assert min(np.sum(ref == 0), np.sum(ref == 1), np.sum(inner)) > 10, (ref == 0).sum()


#: the smooth exact solution of uniform attention with a non-symmetric V (analysis/_exact.py):
#: centres off every symmetry axis of the meshes
V_S2 = np.array([[1.0, 0.3, 0.0], [-0.2, 0.8, 0.1], [0.1, 0.0, 0.6]])
Z_S2 = 0.4 * solver.normalize(np.array([0.3, -0.5, 0.8]))
V_S1 = np.array([[1.0, 0.4], [-0.3, 0.7]])
Z_S1 = 0.5 * np.array([np.cos(0.7), np.sin(0.7)])


def test_hyperbolic_solution_is_the_flow_of_its_particles():
    """Self-check of the exact S^2 solution: weighted points (centroid quadrature of ρ_{z0} on a
    level-5 icosphere) moved by ``ẋ = P_x(V m)``, ``m`` their own weighted mean, keep the mean
    ``m(z(t))`` of :func:`hyperbolic_centre` up to the quadrature's error at t = 0 (measured
    3.1e-5 at t = 0 and 1.9e-5 at T = 2; ``m`` itself moves by 0.3)."""
    from scipy.integrate import solve_ivp

    sm = solver.sphere_mesh(MPI.COMM_SELF, 2, refinement=5)
    x0 = sm.centroids
    w = initial_cell_averages(sm, solver.hyperbolic_poisson_kernel(Z_S2)) * sm.areas

    def rhs(_t, y):
        x = y.reshape(-1, 3)
        v = V_S2 @ (w @ x)
        return (v - (x @ v)[:, None] * x).ravel()

    T = 2.0
    xT = solve_ivp(rhs, (0, T), x0.ravel(), rtol=1e-10, atol=1e-12).y[:, -1].reshape(-1, 3)
    e0 = np.linalg.norm(w @ x0 - solver.hyperbolic_mean(Z_S2))
    mT = solver.hyperbolic_mean(solver.hyperbolic_centre(Z_S2, V_S2, T))
    eT = np.linalg.norm(w @ xT - mT)
    print(f"quadrature error of the mean: {e0:.1e} at t = 0, {eT:.1e} at T = {T}")
    assert np.linalg.norm(mT - solver.hyperbolic_mean(Z_S2)) > 0.2
    assert eT <= 5 * e0


def test_hyperbolic_centre_times():
    """``t = 0`` gives the start (solve_ivp needs an interval of positive length), an array of
    times one row each, and bad times are refused by name."""
    z = solver.hyperbolic_centre(Z_S2, V_S2, 0.0)
    assert np.array_equal(z, Z_S2)
    zs = solver.hyperbolic_centre(Z_S2, V_S2, [0.0, 1.0, 2.0])
    assert zs.shape == (3, 3) and np.array_equal(zs[0], Z_S2)
    assert np.allclose(zs[2], solver.hyperbolic_centre(Z_S2, V_S2, 2.0), atol=1e-12)
    for bad in (-1.0, [1.0, 0.5], np.nan):
        with pytest.raises(ValueError, match="t must be"):
            solver.hyperbolic_centre(Z_S2, V_S2, bad)


def smooth_error(sphere: int, n: int, flux: str = "donor", T: float = 2.0) -> float:
    """L1 error of the DG0 cell averages against the exact ``ρ_{z(T)}`` (cell averages)."""
    kw = {"refinement": n} if sphere == 2 else {"cells": n}
    sm = solver.sphere_mesh(COMM, sphere, **kw)
    V, z0 = (V_S2, Z_S2) if sphere == 2 else (V_S1, Z_S1)
    d = V.shape[0]
    op = DG0Upwind(sm, flux)
    rho0 = op.initial_state(solver.hyperbolic_poisson_kernel(z0))
    field = solver.transport.NonlocalField(op, solver.Model(np.zeros((d, d)), np.zeros((d, d)), V))
    rho, info = solver.transport.advance(op, field, rho0, T, cfl=0.9)
    assert info["mass_drift"] <= 1e-12 and info["min_average"] >= 0
    exact = initial_cell_averages(sm, solver.hyperbolic_poisson_kernel(
        solver.hyperbolic_centre(z0, V, T)))  # fmt: skip
    return sm.integrate(np.abs(rho - exact))


class TestSmoothExactDG0:
    """DG0 (the default flux) on the smooth exact solution: first order between successive
    levels, and no worse than the facet-velocity upwind flux, so the first-moment correction for
    clusters costs nothing on smooth data (its cluster weight vanishes once the cells resolve the
    density).

    Measured (2026-12-08, cluster thresholds widening as h^{1/2}), L1 at icosphere levels
    3 / 4 / 5, default / facet flux:

    * T = 1.5 (peak 21x the mean): 0.06560 / 0.03616 / 0.01889 against 0.06602 / 0.03608 /
      0.01893: orders 0.859, 0.937 (facet 0.872, 0.930), ratios 0.994, 1.002, 0.998
      (thresholds widening as h: 0.0657 / 0.0367 / 0.0212, ratio 1.12 at level 5; as h^{3/4}:
      1.024).
    * T = 2 (peak 32x the mean, under-resolved at level 3): 0.1023 / 0.0592 / 0.0316 against
      0.1070 / 0.0592 / 0.0314: the correction sharpens the level-3 peak (ratio 0.956).
    * S^1, T = 2, 256 / 512 / 1024 cells: 0.0514 / 0.0275 / 0.0146 (orders 0.90, 0.92).
    """

    #: the issue's bar for each successive pair of levels (S^2 3 -> 4 -> 5, S^1 256 -> 512)
    expected_rate = 0.85
    #: the default flux against the facet-velocity flux, level by level (measured ratios up to
    #: 1.002 at T = 1.5, 0.956 at level 3 for T = 2): at most 1 % worse
    facet_margin = 1.01

    def test_s2(self):
        levels = (3, 4, 5)
        errs = [smooth_error(2, n, T=1.5) for n in levels]
        facet = [smooth_error(2, n, "facet", T=1.5) for n in levels]
        rates = np.log2(np.divide(errs[:-1], errs[1:]))
        print(f"S^2 smooth L1: donor {errs} facet {facet}, successive orders {rates}")
        assert rates.min() >= self.expected_rate
        assert all(e <= self.facet_margin * f for e, f in zip(errs, facet, strict=True))

    def test_s2_under_resolved(self):
        """Where level 3 does not resolve the peak (T = 2) the correction lowers the error."""
        donor, facet = smooth_error(2, 3), smooth_error(2, 3, "facet")
        assert donor <= 0.98 * facet  # measured 0.956

    def test_s1(self):
        cells = (256, 512, 1024)
        errs = [smooth_error(1, n) for n in cells]
        rates = np.log2(np.divide(errs[:-1], errs[1:]))
        print(f"S^1 smooth L1: {errs}, successive orders {rates}")
        assert rates.min() >= self.expected_rate


def test_smooth_exact_dg1_s2_second_order():
    """DG1 keeps its order on the smooth exact S^2 solution although its cluster zones are on
    (they do not form where the density is resolved): L1 of the DG function at icosphere levels
    3 / 4, measured 0.01363 / 0.003629 (order 1.91; 1.88 from level 2). Bar: 1.8."""
    errs = []
    for level in (3, 4):
        op = solver.transport.DGUpwind(solver.sphere_mesh(COMM, 2, refinement=level), 1)
        s0 = op.initial_state(solver.hyperbolic_poisson_kernel(Z_S2))
        model = solver.Model(np.zeros((3, 3)), np.zeros((3, 3)), V_S2)
        s, info = solver.transport.advance(op, solver.transport.NonlocalField(op, model), s0, 2.0)
        assert info["mass_drift"] <= 1e-12 and info["min_average"] >= 0
        exact = solver.hyperbolic_poisson_kernel(solver.hyperbolic_centre(Z_S2, V_S2, 2.0))
        errs.append(op.errors(s, exact)["l1"])
    rate = np.log2(errs[0] / errs[1])
    print(f"S^2 smooth DG1 L1 {errs}, order {rate:.3f}")
    assert rate >= 1.8


class TestFrozenStageVelocity:
    """``velocity_stages="frozen"``: the velocity of the step's start for its three SSP-RK3
    stages (one evaluation per step and flow instead of three) while the density is spread
    (the active set chose the full evaluation); ``"frozen_always"`` on every step.

    Measured (2026-12-08) on the smooth S^1 exact solution (:func:`smooth_error`'s case,
    ``T = 2``, fixed steps, ``"frozen_always"``): L1 distance to ``"each"`` 6.44e-3 / 3.23e-3 at
    ``cfl`` 0.9 / 0.45 on 256 cells (ratio 1.99: first order in ``Δt``), 6.44e-3 / 3.42e-3 /
    1.77e-3 at 256 / 512 / 1,024 cells (``cfl`` 0.9; ``Δt ∝ h``: first order in ``h`` too),
    against spatial errors 5.14e-2 / 2.75e-2 / 1.46e-2: the time error stays at 0.125 of the
    spatial error under refinement, and the total error grows by 3.4 - 3.8 %. ``"each"``
    itself moves by 4e-7 when ``Δt`` halves (third order)."""

    #: first order in Δt: the distance halves with the step (measured 1.993)
    ratio = (1.8, 2.2)
    #: time error against spatial error (measured 0.125 and 0.124): a 1.6x margin
    share = 0.2

    @staticmethod
    def _runs(cells: int, cfls) -> tuple:
        sm = solver.sphere_mesh(COMM, 1, cells=cells)
        op = DG0Upwind(sm)
        rho0 = op.initial_state(solver.hyperbolic_poisson_kernel(Z_S1))
        zero = np.zeros((2, 2))
        field = solver.transport.NonlocalField(op, solver.Model(zero, zero, V_S1))
        exact = initial_cell_averages(sm, solver.hyperbolic_poisson_kernel(
            solver.hyperbolic_centre(Z_S1, V_S1, 2.0)))  # fmt: skip
        out = {}
        for cfl in cfls:
            for mode in ("each", "frozen"):
                stages = "frozen_always" if mode == "frozen" else mode
                rho, info = solver.transport.advance(op, field, rho0, 2.0, cfl=cfl,
                                                     velocity_stages=stages)  # fmt: skip
                assert info["mass_drift"] <= 1e-12 and info["min_average"] >= 0
                out[cfl, mode] = rho
        dist = {cfl: sm.integrate(np.abs(out[cfl, "frozen"] - out[cfl, "each"])) for cfl in cfls}
        return dist, sm.integrate(np.abs(out[cfls[0], "each"] - exact))

    def test_first_order_in_time_below_the_spatial_error(self):
        d256, e256 = self._runs(256, (0.9, 0.45))
        d512, e512 = self._runs(512, (0.9,))
        print(f"frozen - each: {d256} (256 cells), {d512} (512); spatial {e256}, {e512}")
        assert self.ratio[0] <= d256[0.9] / d256[0.45] <= self.ratio[1]
        assert d256[0.9] <= self.share * e256 and d512[0.9] <= self.share * e512

    def test_one_evaluation_per_spread_step_and_flow(self, tmp_path, monkeypatch):
        """``evolve(active=τ)``: one velocity evaluation per step and flow while the field is
        spread (every target active), three after the density has clustered and always with
        ``"each"`` (the plan's included); without an active set
        ``"frozen"`` is refused (it would change nothing); the option is in the resume
        fingerprint, and a bad value is refused by name."""
        from solver.transport import Transport
        from solver.velocity import NonlocalVelocity

        sm = solver.sphere_mesh(COMM, 1, cells=48)
        base = solver.Model(2 * np.eye(2), 2 * np.eye(2), 4 * np.eye(2))  # clusters by t = 2
        pert = base.perturbed(solver.TiedLoRA(dA=np.zeros((2, 2)), dV=0.1 * np.eye(2)))
        init = solver.VonMisesFisher((0.0, 1.0), 2.0)
        calls = {"evals": 0, "expect": 0, "spread": 0, "steps": 0}
        real_eval, real_active = NonlocalVelocity.__call__, NonlocalVelocity.evaluate_active
        real_step = Transport.step

        def counting(real):
            def f(self, *a, **k):
                calls["evals"] += 1
                return real(self, *a, **k)

            return f

        def step(self, rho, t, dt, u0=None, capped=False):
            spread = self.field.spread  # of the plan's evaluation, u0's
            assert spread == bool(np.all(self.field.active(rho)))  # every target active
            calls["steps"] += 1
            calls["spread"] += spread
            calls["expect"] += 1 if spread and self.stages == "frozen" else 3
            return real_step(self, rho, t, dt, u0, capped)

        monkeypatch.setattr(NonlocalVelocity, "__call__", counting(real_eval))
        monkeypatch.setattr(NonlocalVelocity, "evaluate_active", counting(real_active))
        monkeypatch.setattr(Transport, "step", step)
        for mode in ("each", "frozen"):
            calls.update(evals=0, expect=0, spread=0, steps=0)
            solver.evolve(sm, base, init, 2.0, perturbed=pert, progress=False, active=1e-3,
                          velocity_stages=mode, output=tmp_path / mode)  # fmt: skip
            assert calls["evals"] == calls["expect"], (mode, calls)
            assert 0 < calls["spread"] < calls["steps"], calls  # both phases (measured 54/106)
        with pytest.raises(ValueError, match="needs active"):  # it would do nothing
            solver.evolve(sm, base, init, 0.5, progress=False, velocity_stages="frozen")
        with pytest.raises(ValueError, match="stepping"):  # the fingerprint names what differs
            solver.evolve(sm, base, init, 2.0, perturbed=pert, progress=False, resume=True,
                          active=1e-3, velocity_stages="frozen",
                          output=tmp_path / "each")  # fmt: skip
        with pytest.raises(ValueError, match="velocity_stages"):
            solver.evolve(sm, base, init, 0.5, progress=False, velocity_stages="lagged")
