"""The DG0 (finite-volume) upwind transport operator on a sphere mesh, in DOLFINx.

Meshes are manifold meshes of the unit sphere S^{gdim-1}: the circle (intervals in R^2) or
the sphere (triangles in R^3), distributed over MPI ranks with ``GhostMode.shared_facet`` so
that interior-facet integrals see both neighbours.

Two fluxes (``DG0Upwind(sm, flux=...)``)
---------------------------------------
``flux="facet"``: the velocity is continuous P1 (values at the mesh vertices,
tangent there), with a single normal velocity per facet quadrature point,
``u_n = ½ (u⁺·n⁺ - u⁻·n⁻)`` (outward from '+'), and the upwind value:
``|K| dρ_K/dt = -Σ_F ∫_F u_n ρ^{up} ds``. First order (L1 rate ~0.94 on the S^1 exact
solution) but it *pins clusters*: a cluster narrower than a cell attracts its neighbourhood,
so the vertex velocity points into the cluster's cell on every facet and no mass leaves it
(a point mass that should drift by 9 cells stays put; see tests/test_point_mass.py).

``flux="donor"`` (the default): flux-vector splitting with the donor cell's own velocity. The
velocity is one vector per cell, ``u_K = X[ρ](c_K)`` at the cell's centroid ``c_K`` on the
sphere (a DG0 vector field: the velocity targets are the owned centroids, the same points as the
sources of the nonlocal integral). Each cell pushes its own mass out with its own velocity, so
clusters move as point masses do (the upwind scheme of Delarue, Lagoutière & Vauchelet 2016;
Carrillo, James, Lagoutière & Vauchelet 2016, which converges in Wasserstein distance for
measure data, Dirac masses included):

.. math::

    |K| \\frac{dρ_K}{dt} = - \\sum_{F = K ∩ L} |F| \\big( ρ_K\\, o_{K,F} - ρ_L\\, o_{L,F} \\big) ,
    \\qquad o_{K,F} = \\max\\big(u_K·ñ_{KF},\\ \\tfrac12 (u_K + u_L)·ñ_{KF},\\ 0\\big) ,
    \\qquad ñ_{KF} = \\tfrac12 (n_K - n_L) ,

with ``n_K`` the outward co-normal of ``K`` on ``F`` (``o_{L,F}`` with ``ñ_{LF} = -ñ_{KF}``).
The donor's own velocity makes a cluster leave its cell when the cluster moves (in a cell
that attracts its neighbourhood the facet velocity points inwards everywhere); the facet
velocity ``½ (u_K + u_L)`` makes mass leave a cell that sits on a repelling point (the
antipode of a cluster, where ``u_K ≈ 0`` but the flow expands): with the donor term alone
such a cell kept ~1e-6 of the mass for ever (measured on S^1 at t = 59, feeding a stream
that held adaptive steps at the size of a cell).

Both fluxes: on a sphere made of flat cells the two co-normals of a facet differ
(``n_K ≠ -n_L``); their antisymmetric average ``ñ`` changes sign when ``K`` and ``L`` swap,
so the facet flux enters the two cells with opposite signs (mass conserved to round-off) and
the form is symmetric under '+' ↔ '-' (the answer does not depend on the partition; DOLFINx
issue 3501).

First moment (``first_moment=True``, the default with ``"donor"``)
----------------------------------------------------------------
With the donor's velocity a cluster's mass leaves with the cluster's own velocity. Moving the
mass ``|F| ρ_K o_{K,F}`` from ``c_K`` to ``c_L`` moves the first moment ``Σ_K ρ_K |K| c_K``
by ``d_F = P_{c_K}(c_L - c_K)`` per unit mass, so the cell's mass moves at
``Σ_F |F| o_{K,F} d_F / |K|``. On ``S^1`` (uniform cells) with ``o = (u_K·ñ)^+`` that is
``u_K`` (1-D flux-vector splitting), on triangles it is not: between 2/3 and 4/3 of ``u_K``
on an equilateral cell, depending on the direction, which is right only on average over cell
orientations (Wasserstein order 1/2 for Dirac data) and made an S^2 cluster drift 39 % short
of a point mass. So each cell sends its mass along the *centroid steps* instead. The facet velocity
``½ (u_K + u_L)`` carries the outflow ``|F| (½ (u_K + u_L)·ñ_{KF})^+`` (so that a cell on a
repelling point empties: there ``u_K ≈ 0`` but the flow expands; with the donor term alone
such a cell kept ~1e-6 of the mass for ever on S^1, feeding a stream that held adaptive steps
at the size of a cell), and what it leaves of ``|K| u_K`` is written in the cone of the two
centroid steps that hold it,

.. math::

    E_K = |K|\\, u_K - \\sum_F |F| \\big(\\tfrac12 (u_K + u_L)·ñ_{KF}\\big)^+ d_F
        = g_i\\, d_i + g_j\\, d_j , \\qquad g_i, g_j >= 0 ,

sent through those two facets (none through the third). Then ``Σ_F |F| o_{K,F} d_F = |K| u_K``
exactly: the whole first moment moves as ``Σ_K ρ_K |K| u_K``, the continuum's ``∫ X[ρ] dρ`` at
the centroids, and a cluster drifts as a point mass does on any mesh. Where the flow converges
(at a cluster, and in the cells next to it, whose velocity points into it) the facet velocity
sends nothing and ``E_K = |K| u_K``: the smallest non-negative outflow with that first
moment, along the two steps that bracket ``u_K``, so no mass is sent against the flow. In the
UFL form the outflow reads

.. math::

    o_{K,F} = \\big(\\tfrac12 (u_K + u_L)·ñ_{KF}\\big)^+ + \\big(a_K·ñ_{KF}\\big)^+

(times the cluster weight ``w_K`` below) with the *directional velocity* ``a_K``
(:func:`directional_velocity`): the tangent vector with
``|F_i| a_K·ñ_i = g_i`` on the two facets (on a flat triangle ``Σ_F |F| ñ_F ≈ 0``, so
``a_K·ñ <= 0`` on the third).

Measured (tests/test_point_mass.py, icosphere level 3, width 0.01 ≪ h ≈ 0.1): the perturbed
cluster is 0.19 % of a 0.49 rad displacement off the point-mass ODE; 5.8 % with the plain
donor outflow ``max(u_K·ñ, ½ (u_K + u_L)·ñ, 0)`` (``first_moment=False``).

A cluster between two centroids is then held by its neighbours as well (the mass splits so
that its first moment sits at the cluster), and those neighbours' velocities, of the size of
the attraction at one cell's distance, relax the split at the rate of the attraction (order
``‖V‖``) on every mesh: after clustering that rate, not the drift, sets the explicit step
(forgetting benchmark: ``Δt ≈ 0.2`` at ``cfl`` 0.9; docs/benchmarks/forgetting.md). A
linearly implicit (backward Euler, velocity frozen over the step) step would not be held by
it but is not accurate either: with the velocity frozen the cluster is pulled back towards its
old position, and it moves ``v Δt / (1 + λ Δt)`` instead of ``v Δt`` per step (``λ`` the
attraction rate; measured: 13 such steps put the S^1 drift of tests/test_adaptive.py 1.8 % off,
against 1e-4 with explicit steps).

Where the correction applies (``cluster_weight``)
------------------------------------------------
The correction is what a point mass needs, not what a smooth density needs: for a smooth
density the neighbours' outflows already move the first moment right on average, and the
per-cell correction (of the size of ``|u_K|`` on triangles) only adds numerical diffusion (S^2
exact solution below: L1 order 0.57 / 0.71 with it everywhere). So the directional outflow is
weighted per cell, ``o_{K,F} = (½ (u_K + u_L)·ñ)^+ + w_K (a_K·ñ)^+``, by a continuous function
of the density (:func:`cluster_weight`): ``w_K = 1`` where the emptiest neighbour of ``K``
holds less than ``s_0`` of ``ρ_K`` (a cluster narrower than a cell, or spread over a few cells
by the scheme's own diffusion), ``0`` above ``s_1`` (smooth on the scale of the cells), linear
in between, with ``1 - s_i = (1 - c_i) min(1, h_K / 0.08)^{1/2}``, ``(c_0, c_1) = (0.6,
0.9)`` (:data:`CLUSTER`, :data:`CLUSTER_H`, :func:`cluster_scale`; ``h_K = |K|^{1/(gdim-1)}``:
coarse cells, S^1 below 79 cells and icosphere level 3 and coarser, keep the fixed thresholds).

Why the thresholds widen as ``h^{1/2}``: while a smooth measure *collapses* into a cluster of
width ``σ`` (shrinking like ``e^{-λt}``) and drifts at ``v``, the facet-velocity part moves the
first moment with an error ``~ v h / σ`` (the upwind error ``½ h u'`` of a cell, summed over a
cluster whose mass is not symmetric about the velocity's zero). Summed over the collapse that
is ``~ v h / (λ σ_w)``, ``σ_w`` the width at which ``w`` turns on. With fixed thresholds
``σ_w`` is a fixed number of cells (the peak cell's neighbours hold ``e^{-h²/2σ²}`` of it) and
the cluster trailed the particles' by a lag that did not shrink with ``h`` (S^1, phase
diagram's tiny case, ``ε = 0.0218``, ``T = 12``: −1.42e-3 / −1.44e-3 / −1.6e-3 rad at 256 /
1,024 / 2,048 cells). With ``1 - s ∝ h^{1/2}``, ``σ_w / h ∝ h^{-1/4}`` grows and the lag
falls as ``h^{1/4}`` (measured 2026-12-08: −8.85e-4 / −5.59e-4 / −5.14e-4;
tests/test_collapse.py), while a density smooth on a fixed scale has ``min_L ρ_L / ρ_K = 1 -
O(h)`` above ``s_1`` once ``h`` is small, so the smooth order is kept. Widening as ``h``
instead (lag ``∝ h^{1/2}``) costs the smooth peak (S^2 level 5 below: 1.12x the facet flux;
``h^{3/4}``: 1.024x), so ``h^{1/2}`` is the widest the smooth bars allow.

Measured (2026-12-08): the smooth exact solution of uniform attention with a non-symmetric
``V`` (:func:`solver.analysis.hyperbolic_centre`, S^2, ``T = 1.5``), L1 errors 0.0656 /
0.03616 / 0.01889 at icosphere levels 3 / 4 / 5 (facet-velocity flux: 0.06602 / 0.03608 /
0.01893; successive orders 0.859, 0.937), ``T = 2`` at level 3 0.1023 (facet 0.1070); S^1
(``T = 2``) 0.0514 / 0.0275 / 0.0146 at 256 / 512 / 1,024 cells (orders 0.90, 0.92); point
masses on S^1 (120 cells) within 0.26 % and on S^2 (level 3) within 0.19 % of the ODE
(tests/test_transport.py, tests/test_point_mass.py).

A case split is never a jump: the cone of ``E_K`` is the pair with the largest smaller
coefficient (at a cone's edge both pairs give the same outflows), and ``w_K`` is continuous,
so the right-hand side is a continuous function of ``u`` and ``ρ`` (tests/test_continuity.py:
data moved by 1e-14 move a clustering S^2 run by 1e-15).

Positivity (both fluxes): forward Euler keeps ``ρ >= 0`` exactly for
``Δt <= min_K |K| / (outflow rate of K per unit density)``
(:meth:`DG0Upwind.positivity_time_step`), and SSP-RK3 inherits it. For ``"facet"`` and the plain
donor outflow that rate is at most ``|∂K| max|u|`` (the a-priori step
:meth:`DG0Upwind.max_time_step`); the directional outflow ``g_i + g_j`` has no clean bound
below it (measured: at most 0.59 of it on icospheres of levels 2 - 4 and circles with random
velocity fields, tests/test_point_mass.py), so fixed steps of ``cfl <= 1`` times that bound use
the capped Euler stages of :meth:`DG0Upwind.euler_step`, positive for any step (the cap is
inactive in every case measured).

DOLFINx assembles this form (:meth:`DG0Upwind.assemble_rhs`, the reference). The time stepper
uses :meth:`DG0Upwind.rhs`, which evaluates the same quadrature facet by facet in NumPy from
DOLFINx's integration entities, dofmaps and geometry (equal to the assembly to round-off).
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

try:  # the PyPI DOLFINx wheel loads MPI through mpi4py: this import must come first
    import dolfinx_solver  # noqa: F401
except ImportError:  # pragma: no cover - conda / system DOLFINx
    pass

import ufl
from dolfinx import fem, la
from scipy import sparse

from ..mesh import SphereMesh, normalize
from ._forms import check_cfl, mass_floor, unit_mass, upwind_flux, upwind_outflows

__all__ = [
    "DG0Upwind",
    "FLUXES",
    "directional_velocity",
    "directional_velocity_numpy",
    "cell_stencil",
]

try:  # numba is optional: without it directional_velocity is the NumPy version
    import numba as _nb
except ImportError:  # pragma: no cover - depends on the environment
    _nb = None


#: The DG0 fluxes (see module doc).
FLUXES = ("facet", "donor")


class DG0Upwind:
    """Right-hand side ``dρ/dt = -div(u ρ)`` of a DG0 upwind scheme (see module doc).

    This is the *transport operator interface* that :func:`solver.evolve` drives (a DG1
    operator implements the same):

    - the state is a NumPy array whose first axis is this rank's owned cells (DG0: the cell
      averages, shape ``(num_owned,)``);
    - :attr:`targets`, :attr:`num_targets`, :attr:`target_keys` — owned velocity nodes and
      their global keys (``flux="facet"``: the mesh vertices, P1 velocity; ``"donor"``: the
      cell centroids on the sphere, one velocity per cell);
    - :meth:`rhs` ``(velocity at targets, state) -> d state/dt``;
    - :attr:`source_points`, :attr:`source_keys`, :meth:`source_weights` — the quadrature of
      the nonlocal integral ``∫ f dμ ≈ Σ_j w_j f(y_j)`` (owned points, a rank-independent
      global numbering, weights from the state);
    - :meth:`cell_averages`, :meth:`limit`, :meth:`initial_state`, :meth:`max_time_step`,
      :meth:`positivity_time_step`.
    """

    degree = 0
    #: fixed steps take the capped stages of :meth:`euler_step`: the a-priori step does not
    #: bound the directional outflow (module doc, "Positivity")
    capped_fixed_steps = True

    def __init__(self, sm: SphereMesh, flux: str = "donor", first_moment: bool = True):
        if flux not in FLUXES:
            raise ValueError(f"DG0 flux must be one of {FLUXES}, got {flux!r}")
        self.sm, self.flux = sm, flux
        #: the donor outflow moves each cell's first moment at its velocity (module doc)
        self.first_moment = flux == "donor" and bool(first_moment)
        msh, gdim = sm.mesh, sm.gdim
        self._nown = nown = sm.num_owned
        if flux == "donor":
            self.Vu = fem.functionspace(msh, ("DG", 0, (gdim,)))
            if not np.array_equal(self.Vu.dofmap.list[:nown, 0], np.arange(nown)):
                raise RuntimeError("DG0 vector dofs are not numbered by cell")  # pragma: no cover
            self.num_targets = nown
            self.targets = sm.centroids
            self.target_keys = sm.keys
            self.u = fem.Function(self.Vu, name="velocity")
            qdeg = 1  # constant on a flat facet
        else:
            self.Vu = fem.functionspace(msh, ("Lagrange", 1, (gdim,)))
            self.num_targets = self.Vu.dofmap.index_map.size_local
            self.targets = normalize(self.Vu.tabulate_dof_coordinates()[: self.num_targets, :gdim])
            self.target_keys = self.Vu.dofmap.index_map.local_to_global(
                np.arange(self.num_targets, dtype=np.int32)
            )
            self.u = fem.Function(self.Vu, name="velocity")
            qdeg = 2  # P1 velocity along the facet: two Gauss points on S^2
        self.rho = fem.Function(sm.V0, name="density")
        q = ufl.TestFunction(sm.V0)
        self.a = None  # the directional velocity (one vector per cell)
        if self.first_moment:
            self.a = fem.Function(self.Vu, name="directional_velocity")
            self._stencil = cell_stencil(sm)
            #: the owned cells' threshold factor of :func:`cluster_weight`
            self.cluster_scale = cluster_scale(sm.areas, gdim)
        out_p, out_m = upwind_outflows(self.u, msh, donor=flux == "donor", direction=self.a)
        flux_form = upwind_flux(self.rho, (out_p, out_m))
        dS = ufl.dS(metadata={"quadrature_degree": qdeg})
        self.form = fem.form(-(q("+") - q("-")) * flux_form * dS)
        self._outflow_form = fem.form((q("+") * out_p + q("-") * out_m) * dS)
        self._recent = []  # (velocity, u, a) of the last four velocities set
        self._theta = fem.Function(sm.V0, name="outflow_fraction")  # for euler_step
        self._b = la.vector(sm.V0.dofmap.index_map, 1)
        self._fv = self._facet_data()

    @property
    def source_points(self) -> np.ndarray:
        return self.sm.centroids

    @property
    def source_keys(self) -> np.ndarray:
        return self.sm.keys

    def source_weights(self, rho: np.ndarray) -> np.ndarray:
        """``ρ_K |K|``: centroid quadrature of the measure."""
        return rho * self.sm.areas

    def cell_averages(self, rho: np.ndarray) -> np.ndarray:
        return rho

    def limit(self, rho: np.ndarray) -> np.ndarray:
        return rho

    def initial_state(self, f, degree: int = 4) -> np.ndarray:
        """Cell averages of ``f`` (quadrature of the given degree), normalised to unit mass."""
        rho = self.sm.cell_averages(f, degree)
        return rho / unit_mass(self.sm, rho)

    def max_time_step(self, speed: float, cfl: float) -> float:
        """``cfl * min_K |K| / |∂K| / speed``: forward Euler keeps ``ρ >= 0`` for cfl <= 1."""
        check_cfl(cfl)
        return cfl * self.sm.min_area_per_perimeter() / max(speed, 1e-300)

    def _outflow(self, velocity: np.ndarray) -> np.ndarray:
        """``o_K = Σ_F ∫_F (outflow speed of K) ds`` on the owned cells (``"donor"``:
        ``Σ_F |F| o_{K,F}``, module doc; ``"facet"``: ``Σ_F ∫_F (u_n)^+`` outward from K)."""
        self._set_velocity(velocity)
        b = self._b
        if self._fv is None:
            b.array[:] = 0.0
            fem.assemble_vector(b.array, self._outflow_form)
        else:
            out_p, out_m = self._outflow_speeds(self.u.x.array)
            self._cell_outflow(out_p.sum(axis=0), out_m.sum(axis=0))
        b.scatter_reverse(la.InsertMode.add)
        return b.array[: self._nown].copy()

    def _cell_outflow(self, sp: np.ndarray, sm: np.ndarray) -> None:
        """Each local cell's outflow rate, from the per-facet rates of '+' and '-', into
        ``self._b`` (before its reverse scatter)."""
        fd, b = self._fv, self._b
        nloc = b.array.size
        b.array[:] = np.bincount(fd["plus"], sp, nloc) + np.bincount(fd["minus"], sm, nloc)

    def _min_ratio(self, out: np.ndarray, where: np.ndarray | None = None) -> float:
        pos = out > 0 if where is None else (out > 0) & where
        local = float(np.min(self.sm.areas[pos] / out[pos], initial=np.inf))
        return self.sm.comm.allreduce(local, op=MPI.MIN)

    def positivity_time_step(self, velocity: np.ndarray) -> float:
        """``min_K |K| / o_K`` (:meth:`_outflow`): the largest forward-Euler step that keeps
        every ``ρ >= 0`` for this velocity (``inf`` if nothing flows out; the same on every
        rank). SSP-RK3 keeps positivity under the same step for a frozen velocity."""
        return self._min_ratio(self._outflow(velocity))

    def step_limits(self, velocity: np.ndarray, rho: np.ndarray, tail: float) -> tuple:
        """``(Δt_+, Δt_m)``: the positivity limit :meth:`positivity_time_step` over all cells,
        and the same limit over the cells that hold all but ``tail`` of the mass (the lightest
        cells, together at most ``tail`` of it, left out): the longest step in which the mass
        moves at most one cell. Identical on every rank."""
        out = self._outflow(velocity)
        m = rho * self.sm.areas
        floor = mass_floor(self.sm.comm, m, tail)  # cells below it hold <= tail of the mass
        return self._min_ratio(out), self._min_ratio(out, m >= floor)

    def euler_step(self, velocity: np.ndarray, rho: np.ndarray, dt: float) -> np.ndarray:
        """Forward Euler ``ρ + Δt dρ/dt`` with every cell's outflow capped at its content:

        .. math:: |K| ρ_K' = |K| ρ_K - Δt \\sum_F |F| \\big(θ_K ρ_K o_{K,F}
                  - θ_L ρ_L o_{L,F}\\big), \\qquad θ_K = \\min(1, |K| / (Δt\\, o_K)),

        ``o_K`` the outflow rate of :meth:`_outflow`. Where ``Δt`` is within the positivity
        limit of ``K`` (``θ_K = 1``) this is the plain upwind step; a cell whose velocity
        would empty it more than once in ``Δt`` sends out exactly its content, split over its
        facets as the fluxes are. So ``ρ' >= 0`` and the mass is conserved for any ``Δt``.
        Adaptive stepping chooses ``Δt`` within the positivity limit of the cells that hold
        all but a tiny tail of the mass (:meth:`step_limits`): only those light cells are
        capped, and the mass is transported as by the plain scheme.
        """
        fd, b, nown = self._fv, self._b, self._nown
        if fd is None:  # pragma: no cover - non-affine geometry: no facet data
            raise NotImplementedError("the capped Euler step needs the facet data (P1 mesh)")
        self._set_velocity(velocity)
        self._set_density(rho)
        nloc = b.array.size
        out_p, out_m = self._outflow_speeds(self.u.x.array)
        sp, sm = out_p.sum(axis=0), out_m.sum(axis=0)
        self._cell_outflow(sp, sm)
        b.scatter_reverse(la.InsertMode.add)
        o = b.array[:nown]
        th = self._theta.x.array
        th[:nown] = np.minimum(1.0, self.sm.areas / np.maximum(dt * o, 1e-300))
        self._theta.x.scatter_forward()
        r = self.rho.x.array
        flux = r[fd["plus"]] * th[fd["plus"]] * sp - r[fd["minus"]] * th[fd["minus"]] * sm
        b.array[:] = np.bincount(fd["minus"], flux, nloc) - np.bincount(fd["plus"], flux, nloc)
        b.scatter_reverse(la.InsertMode.add)
        return np.maximum(rho + dt * b.array[:nown] / self.sm.areas, 0.0)

    def _facet_data(self):
        """Per interior facet of the flux form: its two cells and the normal-velocity map.

        The facets (and which cell is '+') are DOLFINx's integration entities of the flux
        form. For a flat cell the outward co-normal ``n`` is constant on a facet; with
        ``ñ = ½ (n⁺ − n⁻) w_q |F|`` (``|F| = 1`` on ``S^1``) the form's quadrature reads

        * ``"donor"`` (one point, the DG0 velocity is constant):
          ``ρ⁺ (u⁺·ñ)^+ - ρ⁻ (-u⁻·ñ)^+``;
        * ``"facet"`` (the point itself on ``S^1``; two Gauss points on the edges of
          ``S^2``): ``Σ_q u(s_q)·ñ (ρ⁺ if u(s_q)·ñ > 0 else ρ⁻)``, ``u(s_q)`` interpolated
          between the facet's vertices.

        Stored as sparse matrices ``G⁺``, ``G⁻`` (velocity dofs -> ``u(s_q)·ñ`` as seen from
        '+' and '-', rows ordered by quadrature point then facet; the same matrix for
        ``"facet"``). Returns ``None`` (DOLFINx assembles) for non-affine geometry.
        """
        msh, gdim = self.sm.mesh, self.sm.gdim
        gdofs = msh.geometry.dofmaps[0]
        if gdofs.shape[1] != gdim:  # not P1 geometry (simplex of gdim vertices)
            return None
        dom = np.asarray(self.form._cpp_object.domains(fem.IntegralType.interior_facet, 0))
        dom = dom.reshape(-1, 2, 2)
        cells, lf = dom[:, :, 0], dom[:, :, 1]
        x = msh.geometry.x[:, :gdim]
        conormal = []
        r = np.arange(len(cells))
        for side in (0, 1):
            c, f = cells[:, side], lf[:, side]
            p = x[gdofs[c]]  # (nf, nv, gdim), nv = gdim
            if gdim == 2:  # interval: facet f is vertex f, outward = away from the other one
                v = p[r, f] - p[r, 1 - f]
            else:  # triangle: facet f is the edge without vertex f; outward from vertex f
                a = p[r, (f + 1) % 3]
                e = p[r, (f + 2) % 3] - a
                v = a - p[r, f]
                v = v - (np.einsum("ij,ij->i", v, e) / np.einsum("ij,ij->i", e, e))[:, None] * e
            conormal.append(v / np.linalg.norm(v, axis=1)[:, None])
        nt = 0.5 * (conormal[0] - conormal[1])
        c, f = cells[:, 0], lf[:, 0]
        if gdim == 3:
            length = np.linalg.norm(x[gdofs[c, (f + 2) % 3]] - x[gdofs[c, (f + 1) % 3]], axis=1)
            nt = nt * length[:, None]
        if self.flux == "donor":  # one point; the velocity dofs of a cell are its own
            sides = [cells[:, 0], cells[:, 1]]
            ends, interps = [s[:, None] for s in sides], [np.ones((1, 1))] * 2
        else:
            cd = self.Vu.dofmap.list[c]
            if gdim == 2:
                ends = cd[r, f][:, None]
                interp = np.ones((1, 1))  # one point, weight 1
            else:
                ends = np.column_stack([cd[r, (f + 1) % 3], cd[r, (f + 2) % 3]])
                g = 0.5 / np.sqrt(3.0)  # Gauss-Legendre on [0, 1]: 2 points, weights 1/2
                interp = 0.5 * np.array([[0.5 + g, 0.5 - g], [0.5 - g, 0.5 + g]])  # (q, end)
            ends, interps = [ends, ends], [interp, interp]
        G = []
        for e, interp in zip(ends, interps, strict=True):
            nq, nf = interp.shape[0], len(c)
            vals = np.einsum("qe,fi->qfei", interp, nt)
            cols = np.broadcast_to(gdim * e[None, :, :, None] + np.arange(gdim), vals.shape)
            rows = np.broadcast_to(np.arange(nq * nf).reshape(nq, nf, 1, 1), vals.shape)
            G.append(sparse.csr_matrix(
                (vals.ravel(), (rows.ravel(), cols.ravel())), shape=(nq * nf, self.u.x.array.size)
            ))  # fmt: skip
        return {"plus": cells[:, 0].astype(np.int64), "minus": cells[:, 1].astype(np.int64),
                "G": G, "nq": interps[0].shape[0]}  # fmt: skip

    def _outflow_speeds(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``w_q |F| (outflow speed)`` of '+' and of '-' per quadrature point and facet
        ``(nq, nf)``, from the local (owned + ghost) velocity dofs."""
        fd = self._fv
        up = (fd["G"][0] @ u).reshape(fd["nq"], -1)
        if self.flux == "facet":
            return np.maximum(up, 0.0), np.maximum(-up, 0.0)
        um = (fd["G"][1] @ u).reshape(fd["nq"], -1)
        avg = 0.5 * (up + um)  # the facet's velocity, from the two centroids
        if self.a is not None:  # (avg·ñ)^+ + (a⁺·ñ)^+ and (-avg·ñ)^+ + (-a⁻·ñ)^+
            a = self.a.x.array
            ap, am = (fd["G"][0] @ a).reshape(fd["nq"], -1), (fd["G"][1] @ a).reshape(fd["nq"], -1)
            return (np.maximum(avg, 0.0) + np.maximum(ap, 0.0),
                    np.maximum(-avg, 0.0) + np.maximum(-am, 0.0))  # fmt: skip
        return np.maximum(np.maximum(up, avg), 0.0), np.maximum(np.maximum(-um, -avg), 0.0)

    def _facet_rhs(self, u: np.ndarray, rho: np.ndarray, nloc: int) -> np.ndarray:
        """``b_K = -Σ_F ±∫_F (ρ⁺ out⁺ - ρ⁻ out⁻) ds`` on local cells (owned + ghosts)."""
        fd = self._fv
        out_p, out_m = self._outflow_speeds(u)
        flux = rho[fd["plus"]] * out_p.sum(axis=0) - rho[fd["minus"]] * out_m.sum(axis=0)
        return np.bincount(fd["minus"], flux, nloc) - np.bincount(fd["plus"], flux, nloc)

    def rhs(self, velocity: np.ndarray, rho: np.ndarray) -> np.ndarray:
        """``dρ/dt`` on owned cells for the velocity at the owned :attr:`targets`
        ``(num_targets, gdim)`` and owned cell averages.

        The flux form is evaluated facet by facet in NumPy from :meth:`_facet_data`, which
        gives the same numbers as DOLFINx's assembly of the form (:meth:`assemble_rhs`, the
        reference; equal to round-off, tested) at a fraction of the cost.
        """
        return self._rhs(velocity, rho, assemble=self._fv is None)

    def assemble_rhs(self, velocity: np.ndarray, rho: np.ndarray) -> np.ndarray:
        """:meth:`rhs` by DOLFINx's assembly of the flux form (the reference)."""
        return self._rhs(velocity, rho, assemble=True)

    def _set_velocity(self, velocity: np.ndarray) -> None:
        velocity = np.asarray(velocity, dtype=float)
        if velocity.shape != (self.num_targets, self.sm.gdim):
            raise ValueError(
                f"velocity must have shape {(self.num_targets, self.sm.gdim)} (one vector per "
                f"owned target of the {self.flux!r} flux), got {velocity.shape}"
            )
        u, a = self.u.x, (self.a.x if self.a is not None else None)
        hit = next((i for i, c in enumerate(self._recent) if np.array_equal(c[0], velocity)), -1)
        if self.sm.comm.allreduce(hit, op=MPI.MIN) >= 0:  # a hit on every rank
            _, u_all, a_all = self._recent[hit]  # the plan's velocity at a first stage
            u.array[:] = u_all
            if a is not None:
                a.array[:] = a_all
            return
        u.array[: velocity.size] = velocity.ravel()
        u.scatter_forward()
        if a is not None:
            a.array[: velocity.size] = directional_velocity(
                u.array.reshape(-1, self.sm.gdim), self._stencil
            ).ravel()
            a.scatter_forward()
        # the last velocities set, ghosts and a included: two flows share the operator, and
        # each flow's plan comes before the other flow's stages
        self._recent = [(velocity.copy(), u.array.copy(), None if a is None else a.array.copy()),
                        *self._recent[:3]]  # fmt: skip

    def _set_density(self, rho: np.ndarray) -> None:
        """``ρ`` on the local cells (ghosts by a forward scatter) and, with the first moment,
        ``a_K`` weighted by :func:`cluster_weight` (after :meth:`_set_velocity`, which sets
        the unweighted ``a_K``: the positivity limits use that bound)."""
        self.rho.x.array[: self._nown] = rho
        self.rho.x.scatter_forward()
        if self.a is not None:
            w = cluster_weight(self.rho.x.array, self._stencil["nbr"], self.cluster_scale)
            self.a.x.array[: w.size * self.sm.gdim] *= np.repeat(w, self.sm.gdim)
            self.a.x.scatter_forward()

    def _rhs(self, velocity: np.ndarray, rho: np.ndarray, assemble: bool) -> np.ndarray:
        self._set_velocity(velocity)
        self._set_density(rho)
        b = self._b
        if assemble:
            b.array[:] = 0.0
            fem.assemble_vector(b.array, self.form)
        else:
            b.array[:] = self._facet_rhs(self.u.x.array, self.rho.x.array, b.array.size)
        b.scatter_reverse(la.InsertMode.add)
        return b.array[: self._nown] / self.sm.areas


def cell_stencil(sm: SphereMesh) -> dict:
    """Each owned cell ``K`` and its facets ``F_i`` (DOLFINx's local order: facet ``i`` is
    opposite vertex ``i``): the neighbour ``L_i`` (a local index, ghosts included), the scaled
    co-normal ``|F_i| ñ_{K,F_i}`` exactly as the flux form sees it from ``K`` (of the flat cell
    through the vertices, on curved cells), and the step
    ``d_i = P_{c_K}(c_{L_i} - c_K)`` between the centroids on the sphere, in ``T_{c_K}``; and
    ``cen``, the centroids on the sphere of all local cells (owned, then ghosts); ``cone``, the
    maps of :func:`directional_velocity` (:func:`_cone_maps`), and ``d_area = d / |K|``."""
    msh, gdim, nown = sm.mesh, sm.gdim, sm.num_owned
    tdim, top = gdim - 1, sm.mesh.topology
    top.create_connectivity(tdim, tdim - 1)
    top.create_connectivity(tdim - 1, tdim)
    c2f, f2c = top.connectivity(tdim, tdim - 1), top.connectivity(tdim - 1, tdim)
    gd = msh.geometry.dofmaps[0][:, :gdim]  # the vertices (first on P2 cells too)
    p = msh.geometry.x[:, :gdim][gd]  # (cells, vertices, gdim), ghosts included
    cells = np.arange(len(gd))
    cen = normalize(p.mean(axis=1))
    conormal = np.empty((len(gd), gdim, gdim))
    length = np.ones((len(gd), gdim))
    for i in range(gdim):
        if gdim == 2:  # interval: facet i is vertex i
            v = p[:, i] - p[:, 1 - i]
        else:  # triangle: the edge without vertex i
            a = p[:, (i + 1) % 3]
            e = p[:, (i + 2) % 3] - a
            v = a - p[:, i]
            v = v - (np.einsum("ij,ij->i", v, e) / np.einsum("ij,ij->i", e, e))[:, None] * e
            length[:, i] = np.linalg.norm(p[:, (i + 2) % 3] - p[:, (i + 1) % 3], axis=1)
        conormal[:, i] = v / np.linalg.norm(v, axis=1)[:, None]
    cf = c2f.array.reshape(-1, gdim)
    facets = cf[:nown]  # (nown, gdim)
    off = f2c.offsets
    if np.any(off[facets + 1] - off[facets] != 2):  # pragma: no cover - closed sphere mesh
        raise RuntimeError("a facet of an owned cell does not have two local cells")
    c0, c1 = f2c.array[off[facets]], f2c.array[off[facets] + 1]
    nbr = np.where(c0 == cells[:nown, None], c1, c0)
    j = np.argmax(cf[nbr] == facets[:, :, None], axis=2)  # the facet's index in L
    nt = 0.5 * (conormal[:nown] - conormal[nbr, j]) * length[:nown, :, None]
    step = cen[nbr] - cen[:nown, None]
    step -= np.einsum("kfi,ki->kf", step, cen[:nown])[:, :, None] * cen[:nown, None]
    st = {"nbr": nbr, "nt": nt, "d": step, "cen": cen, "area": sm.areas}
    st["cone"] = _cone_maps(st)
    st["d_area"] = step / sm.areas[:, None, None]
    return st


def directional_velocity(u: np.ndarray, st: dict) -> np.ndarray:
    """The directional velocity ``a_K`` of every owned cell (module doc, "First moment"):
    :func:`directional_velocity_numpy` in compiled loops (numba, when installed; the same
    numbers to round-off, tests/test_transport.py), for a transport step calls it on every
    stage."""
    if _nb is None:  # pragma: no cover - depends on the environment
        return directional_velocity_numpy(u, st)
    C, B = st["cone"]
    return _nb_directional_velocity(np.ascontiguousarray(u, dtype=float), st["nbr"], st["nt"],
                                    st["d_area"], C, B)  # fmt: skip


def directional_velocity_numpy(u: np.ndarray, st: dict) -> np.ndarray:
    """The directional velocity ``a_K`` of every owned cell (module doc, "First moment").

    ``u`` holds the velocity of the local cells (owned, then ghosts) ``(cells, gdim)``. The
    facet velocities carry the outflow ``|F| (½ (u_K + u_L)·ñ)^+``; what they leave of
    ``|K| u_K``, ``E_K = |K| u_K - Σ_F |F| (½ (u_K + u_L)·ñ)^+ d_F``, is written as
    ``g_i d_i + g_j d_j`` with ``g >= 0`` over the two centroid steps whose cone holds it, and
    ``a_K`` is the tangent vector with ``|F_i| ñ_i·a_K = g_i``, ``|F_j| ñ_j·a_K = g_j``; on a
    flat triangle ``Σ_F |F| ñ_F ≈ 0``, so ``a_K·ñ <= 0`` on the third facet (no outflow). On
    ``S^1`` the cone is the step along ``E_K``. Both maps ``E_K / |K| -> g`` and
    ``E_K / |K| -> a_K`` are linear for a given pair of steps: they depend on the mesh only and
    are made once, with the stencil (:func:`cell_stencil`).
    """
    C, B = st["cone"]  # the vector component first: sums of products are the fastest here
    gdim, nown, npair, ncoef = C.shape
    nbr, nt, dk = st["nbr"], st["nt"], st["d_area"]
    uk = u[:nown]
    un = uk[:, None, :] + u[nbr]  # u_K + u_L, (nown, facets, gdim)
    avg = np.maximum(0.5 * sum(un[:, :, i] * nt[:, :, i] for i in range(gdim)), 0.0)
    ek = uk - sum(avg[:, f, None] * dk[:, f] for f in range(avg.shape[1]))  # E_K / |K|
    g = sum(C[i] * ek[:, i, None, None] for i in range(gdim))  # (nown, pairs, coefficients)
    r = np.arange(nown)
    # the pair whose cone holds E_K best (on S^1: the step along E_K): max over the pairs of
    # the smaller coefficient, >= 0 inside a cone; at a cone's edge the two pairs give the same
    # outflows, so round-off on either side changes a_K by round-off only
    pair = np.argmax(g.min(axis=2), axis=1)
    a = sum(B[i] * ek[:, i, None, None] for i in range(gdim))[r, pair]  # (nown, gdim)
    return a


#: a cell whose emptiest neighbour holds less than ``s_0`` of its density counts as a cluster
#: (weight 1), more than ``s_1`` as smooth (weight 0), for cells of size :data:`CLUSTER_H` and
#: larger; on smaller cells (size ``h``) the thresholds are ``1 - (1 - s_i) (h /
#: CLUSTER_H)^{1/2}`` (:func:`cluster_scale`, :func:`cluster_weight`)
CLUSTER = (0.6, 0.9)
#: the cell size (radians; ``|K|^{1/(gdim-1)}``) below which the thresholds widen
CLUSTER_H = 0.08


def cluster_scale(areas: np.ndarray, gdim: int) -> np.ndarray:
    """``min(1, h_K / CLUSTER_H)^{1/2}`` with ``h_K = |K|^{1/(gdim-1)}`` (the cell's length on
    ``S^1``, the square root of its area on ``S^2``): the factor of :func:`cluster_weight`'s
    threshold gaps ``1 - s_i`` (module doc, "Where the correction applies"); 1 on coarse
    cells, which keep the thresholds :data:`CLUSTER`."""
    h = np.asarray(areas, dtype=float) ** (1.0 / (gdim - 1))
    return np.sqrt(np.minimum(h / CLUSTER_H, 1.0))


def cluster_weight(rho: np.ndarray, nbr: np.ndarray, scale=None) -> np.ndarray:
    """``w_K = clip((s_1 ρ_K - min_L ρ_L) / ((s_1 - s_0) ρ_K), 0, 1)`` over the neighbours
    ``L`` of each owned cell ``K``, with ``s_i = 1 - (1 - c_i) f_K`` (``(c_0, c_1)`` =
    :data:`CLUSTER`, ``f_K`` = ``scale``, per owned cell, :func:`cluster_scale`; ``None``:
    ``f = 1``); ``rho`` the local cell averages, owned then ghosts; ``nbr`` the stencil's
    neighbours.

    Where the density is smooth on the scale of the cells, ``min_L ρ_L / ρ_K = 1 - O(h)`` and
    ``w = 0``: the facet-velocity upwind flux, first order. A cluster narrower than a cell sits
    in one cell (or splits over a few), each of which has an empty neighbour: ``w = 1``, and
    its mass moves with the first moment of a point mass. ``w`` is continuous in ``ρ`` (it
    multiplies an outflow of ``ρ_K``, so ``ρ_K → 0`` is continuous too)."""
    if _nb is not None and scale is not None:  # compiled: the same operations, bit for bit
        return _nb_cluster_weight(np.ascontiguousarray(rho, dtype=float), nbr,
                                  np.ascontiguousarray(scale, dtype=float), *CLUSTER)  # fmt: skip
    return cluster_weight_numpy(rho, nbr, scale)


def cluster_weight_numpy(rho: np.ndarray, nbr: np.ndarray, scale=None) -> np.ndarray:
    """:func:`cluster_weight` in NumPy (the reference of the compiled one)."""
    c0, c1 = CLUSTER
    f = 1.0 if scale is None else np.asarray(scale, dtype=float)
    s0, s1 = 1.0 - (1.0 - c0) * f, 1.0 - (1.0 - c1) * f
    rk = rho[: len(nbr)]
    mn = rho[nbr].min(axis=1)
    return np.clip((s1 * rk - mn) / np.maximum((s1 - s0) * rk, 1e-300), 0.0, 1.0)


if _nb is not None:

    @_nb.njit(cache=True)
    def _nb_cluster_weight(rho, nbr, scale, c0, c1):
        """:func:`cluster_weight` in one pass (per cell: the same operations in the same
        order, so the same numbers)."""
        nown, nf = nbr.shape
        w = np.empty(nown)
        for k in range(nown):
            s0 = 1.0 - (1.0 - c0) * scale[k]
            s1 = 1.0 - (1.0 - c1) * scale[k]
            rk = rho[k]
            mn = rho[nbr[k, 0]]
            for f in range(1, nf):
                mn = min(mn, rho[nbr[k, f]])
            v = (s1 * rk - mn) / max((s1 - s0) * rk, 1e-300)
            w[k] = min(max(v, 0.0), 1.0)
        return w

    @_nb.njit(cache=True)
    def _nb_directional_velocity(u, nbr, nt, dk, C, B):
        gdim, nown, npair, ncoef = C.shape
        nf = nbr.shape[1]
        out = np.zeros((nown, gdim))
        ek = np.empty(gdim)
        for k in range(nown):
            for i in range(gdim):
                ek[i] = u[k, i]
            for f in range(nf):
                s = 0.0
                for i in range(gdim):
                    s += (u[k, i] + u[nbr[k, f], i]) * nt[k, f, i]
                s = max(0.5 * s, 0.0)
                for i in range(gdim):
                    ek[i] -= s * dk[k, f, i]
            pair, best = 0, -np.inf
            for p in range(npair):  # the pair whose cone holds E_K best (NumPy version)
                gmin = np.inf
                for c in range(ncoef):
                    g = 0.0
                    for i in range(gdim):
                        g += C[i, k, p, c] * ek[i]
                    gmin = min(gmin, g)
                if gmin > best:
                    best, pair = gmin, p
            for j in range(gdim):
                a = 0.0
                for i in range(gdim):
                    a += B[i, k, pair, j] * ek[i]
                out[k, j] = a
        return out


def _cone_maps(st: dict) -> tuple[np.ndarray, np.ndarray]:
    """For every owned cell and pair ``p = (i, j)`` of its facets: ``C_p`` with
    ``(g_i, g_j) = C_p e`` (``|K| e = g_i d_i + g_j d_j``, ``e = E_K / |K|``: the steps' Gram
    matrix solved) and ``B_p`` with ``a_K = B_p e`` (``|F_i| ñ_i·a = g_i``,
    ``|F_j| ñ_j·a = g_j``, ``a`` tangent at ``c_K``). On ``S^1`` the "pairs" are the two steps
    alone."""
    nbr, nt, d = st["nbr"], st["nt"], st["d"]
    nown, nf = nbr.shape
    area = st["area"][:, None]
    if nf == 2:
        G = np.einsum("kfg,kfg->kf", d, d)
        C = (area[:, :, None] * d / G[:, :, None])[:, :, None, :]  # (nown, 2, 1, gdim)
        n = nt / np.einsum("kfg,kfg->kf", nt, nt)[:, :, None]
        B = np.einsum("kfg,kfh->kfgh", n, C[:, :, 0])  # a = n g / |n|^2
        return _component_first(C), _component_first(B)
    c = st["cen"][:nown]
    pairs = ((0, 1), (1, 2), (2, 0))
    C = np.empty((nown, 3, 2, 3))
    B = np.empty((nown, 3, 3, 3))
    for p, (i, j) in enumerate(pairs):
        D = np.stack([d[:, i], d[:, j]], axis=1)  # (nown, 2, 3)
        G = np.einsum("kig,kjg->kij", D, D)
        C[:, p] = area[:, :, None] * np.linalg.solve(G, D)  # (G^-1 D) |K|
        M = np.stack([nt[:, i], nt[:, j], c], axis=1)  # rows: the two co-normals, the normal
        B[:, p] = np.linalg.inv(M)[:, :, :2] @ C[:, p]
    return _component_first(C), _component_first(B)


def _component_first(X: np.ndarray) -> np.ndarray:
    """``X[..., i]`` as ``X[i]`` (contiguous): the component of ``u_K`` a map multiplies."""
    return np.ascontiguousarray(np.moveaxis(X, -1, 0))
