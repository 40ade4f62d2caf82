"""The per-step cost of the active set (issue 26, "cost follows the mass"): each shortcut gives
the result of the path it replaces (to round-off, or within the tail where it says so)."""

import json

import numpy as np
import pytest
from mpi4py import MPI

import solver

COMM = MPI.COMM_WORLD


def _close(a, b, rel=1e-14):
    scale = COMM.allreduce(float(np.abs(a).max(initial=0.0)), op=MPI.MAX)
    return COMM.allreduce(float(np.abs(a - b).max(initial=0.0)), op=MPI.MAX) <= rel * scale


@pytest.mark.parametrize("cap", [0.9, -0.6])
def test_active_dg0_small_and_whole_regions_are_the_operators(cap):
    """``ActiveDG0`` on a velocity that is zero outside a cap: a small cap (the rows of the flux
    region copied) and a cap over most of the sphere (``cap = -0.6``: the region is beyond
    ``WHOLE`` of the cells, and the operator's kernels run on every cell) give the operator's
    right-hand side, capped Euler step and step limits to round-off."""
    from solver.transport import make_operator
    from solver.transport._active import ActiveDG0
    from solver.velocity import attention_velocity

    sm = solver.sphere_mesh(COMM, 2, refinement=3)
    op = make_operator(sm, 0)
    act = ActiveDG0(op)
    Q = np.array([[2.0, 0.3, 0.0], [0.0, 1.5, 0.2], [0.1, 0.0, 1.0]])
    V = np.array([[1.0, 0.4, 0.0], [-0.3, 0.8, 0.1], [0.0, 0.2, 0.6]])
    c = op.sm.centroids
    rng = np.random.default_rng(COMM.rank + 7)
    rho = 1.0 + rng.random(len(c)) * (c[:, 2] > 0)  # cluster weights between 0 and 1
    u = attention_velocity(c, c, rho * sm.areas, Q.T, V)
    u[c @ solver.normalize(np.array([1.0, 0.2, 0.4])) < cap] = 0.0
    assert op.step_limits(u, rho, 1e-9) == act.step_limits(u, rho, 1e-9)
    dt = op.step_limits(u, rho, 1e-9)[0]
    for step in (0.5 * dt, 20 * dt):
        assert _close(op.euler_step(u, rho, step), act.euler_step(u, rho, step))
    assert _close(op.rhs(u, rho), act.rhs(u, rho))
    region = COMM.allreduce(act.last[0])
    whole = region > act.WHOLE * sm.num_cells
    assert whole == (cap < 0)  # each case takes the path it is meant to test


def test_region_and_edge_kernels_match_their_numpy_twins():
    """The compiled flux-region and facet-speed passes give the NumPy versions' numbers."""
    from solver.transport import _active as A
    from solver.transport import make_operator

    sm = solver.sphere_mesh(COMM, 2, refinement=2)
    act = A.ActiveDG0(make_operator(sm, 0))
    rng = np.random.default_rng(3)
    nloc = act.op.u.x.array.size // 3
    ua = rng.normal(size=(nloc, 3)) * (rng.random(nloc) < 0.2)[:, None]
    ua[rng.random(ua.shape) < 0.5] = 0.0  # rows moving in one or two components only
    aa = rng.normal(size=(nloc, 3)) * (rng.random(nloc) < 0.2)[:, None]
    mv, F = A._region(ua, act._nbr)
    mv0, F0 = A._region_numpy(ua, act._nbr)
    assert np.array_equal(mv, mv0) and np.array_equal(F, F0) and 0 < F.size < len(act._nbr)
    got = A._edges(act._plus, act._minus, act._ntf, ua, aa, mv)
    ref = A._edges_numpy(act._plus, act._minus, act._ntf, ua, aa, mv0)
    assert np.array_equal(got[0], ref[0]) and 0 < got[0].size < act._plus.size
    for g, r in zip(got[1:], ref[1:], strict=True):
        assert np.allclose(g, r, rtol=1e-14, atol=1e-15 * np.abs(r).max())


@pytest.mark.parametrize("tail", [1e-12, 1e-6])
def test_cluster_state_on_the_heavy_cells_is_within_the_tail(tail):
    """``ClusterState(tail=τ)`` (the per-step δ-cluster state of an active-set run, on the
    cells that hold all but ``τ`` of each flow's mass) against the state of every cell, on two
    clusters over a light dust that holds ``τ / 2`` of the mass (far from the clusters): the
    mass outside within ``2τ``, ``atoms_w2²`` within ``8τ`` (distances at most 2, the kept
    mass at least ``1 - τ``), the reach the same (no cell's mass sits at the quantile), every
    column on every rank the same, and the heavy cells a small part of the mesh."""
    from solver.run import ClusterState, Snapshots
    from solver.transport import make_operator

    sm = solver.sphere_mesh(COMM, 2, refinement=3)
    op = make_operator(sm, 0)
    y = sm.centroids / np.linalg.norm(sm.centroids, axis=1)[:, None]
    x0, x1 = solver.normalize(np.array([1.0, 0.2, 0.3])), solver.normalize(np.array([-0.2, 1.0, 0]))

    def density(shift):
        c = np.exp(300 * (y @ x0 - 1)) + 0.7 * np.exp(300 * (y @ solver.normalize(x1 + shift) - 1))
        dust = (y[:, 2] < -0.5).astype(float)  # far from both clusters
        c /= sm.integrate(c)
        return c + 0.5 * tail * dust / sm.integrate(dust)

    avgs = [density(0.0), density(np.array([0.05, 0.0, 0.1]))]
    snaps = Snapshots(sm, op, 2, w2=False)
    snaps(avgs)
    states = {}
    for t in (None, tail):
        cs = ClusterState(sm, 0.1, 1e-2, snaps, tail=t)
        cs.update([f[-1] for f in snaps.fields] if COMM.rank == 0 else None)
        states[t] = np.array(cs(avgs))
        if t is not None:
            kept = COMM.allreduce(int(cs._heavy(avgs[1]).size))
    cols = ClusterState.columns
    full, heavy = states[None], states[tail]
    print(dict(zip(cols, heavy - full, strict=True)), kept, sm.num_cells)
    assert kept < sm.num_cells / 4
    for name in ("mass_outside_base", "mass_outside"):
        i = cols.index(name)
        assert full[i] >= 0.5 * tail * (1 - 1e-9)  # the dust is outside
        assert abs(heavy[i] - full[i]) <= 2 * tail
    for name in ("atoms_w2_base", "atoms_w2"):
        i = cols.index(name)
        assert abs(heavy[i] ** 2 - full[i] ** 2) <= 8 * tail + 1e-15
    for name in ("clusters", "reach_base", "reach"):
        i = cols.index(name)
        assert heavy[i] == pytest.approx(full[i], rel=1e-12, abs=1e-15)
    assert np.array_equal(COMM.bcast(heavy, root=0), heavy)


def test_mass_floor_is_its_sorted_definition():
    """``mass_floor`` (the band of the floor from sums by binary exponent, only that band
    gathered and sorted) gives the floor of the definition (every mass gathered and sorted)
    on masses over 35 orders of magnitude with zeros and ties, for tails from 0 to 0.3, on
    every rank count; and ``inf`` without mass."""
    from solver.transport._forms import mass_floor, mass_floor_sorted

    rng = np.random.default_rng(11 + COMM.rank)
    for n in (1, 50, 4000):
        m = np.exp(rng.uniform(-80, 0, n))
        m[rng.random(n) < 0.1] = 0.0
        m[rng.random(n) < 0.1] = 2.0**-20  # ties, at the edge of a band
        for tail in (0.0, 1e-12, 1e-9, 1e-3, 0.3):
            assert mass_floor(COMM, m, tail) == mass_floor_sorted(COMM, m, tail)
    assert mass_floor(COMM, np.zeros(3), 1e-9) == np.inf
    # a running sum exactly at the limit (dyadic masses): the cells up to it hold exactly the
    # tail and stay below the floor
    m = np.array([1.0, 1.5, 0.0, 1.5]) if COMM.rank == 0 else np.zeros(0)
    assert mass_floor(COMM, m, 0.25) == mass_floor_sorted(COMM, m, 0.25) == 1.5


def cluster_run(tail, comm=COMM):
    """One point mass (on a uniform background of ``1e-14``: every cell holds mass, the
    background together less than ``1e-12``) drifting under a perturbed model on the level-2
    icosphere to ``T = 3``, with the δ-cluster state at every step: on two ranks the cluster
    sits on one of them, and the other holds no heavy cell."""
    sm = solver.sphere_mesh(comm, 2, refinement=2)
    x0 = solver.normalize(np.array([1.0, 0.3, 1.0]))
    model = solver.Model(np.eye(3), np.eye(3), np.eye(3))
    pert = model.perturbed(solver.TiedLoRA(dA=np.zeros((3, 3)), dV=-0.3 * np.diag([0, 0, 1.0])))

    def init(x):
        return np.exp(1e4 * (x @ x0 - 1.0)) + 1e-14

    return solver.evolve(sm, model, init, 3.0, perturbed=pert, w2=False, progress=False,
                         active=tail, save_every=1.0)  # fmt: skip


SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
from test_active_cost import cluster_run, COMM
r = cluster_run({tail!r})
if COMM.rank == 0:
    print("JSON" + json.dumps({{"columns": r.columns, "rows": r.diagnostics.tolist()}}))
"""


@pytest.mark.mpi
@pytest.mark.skipif(COMM.size > 1, reason="runs mpiexec -n 2 itself")
def test_cluster_state_of_an_active_run_is_the_same_on_two_ranks(run):
    """The active-set run's δ-cluster state (heavy cells only) on two ranks, one of which holds
    no heavy cell, is the one-rank state to round-off (and finishes: a rank without heavy
    cells still takes part in every reduction); the one-rank state is the full run's within
    the run's own difference (light cells move differently: 1e-10)."""
    from conftest import ROOT

    tail = 1e-12
    one = cluster_run(tail)
    full = cluster_run(None)
    p = run(["-c", SCRIPT.format(tests=str(ROOT / "tests"), tail=tail)], nprocs=2, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    two = json.loads(p.stdout.split("JSON", 1)[1])
    assert two["columns"] == one.columns
    rows = np.array(two["rows"])
    assert rows.shape == one.diagnostics.shape
    for name in ("mass_outside_base", "mass_outside", "reach_base", "reach", "atoms_w2"):
        i = one.columns.index(name)
        assert np.abs(rows[:, i] - one.diagnostics[:, i]).max() <= 1e-12, name
        assert np.abs(full.diagnostics[:, i] - one.diagnostics[:, i]).max() <= 1e-10, name
    assert one.column("clusters").max() >= 1  # the state was computed


def test_density_diagnostics_min_and_max_in_one_reduction():
    """``density_diagnostics`` (the sums in one reduction, the minimum and maximum in one
    reduction of ``(-min, max)``) gives the mass, the extremes and the first moments of the
    whole density, on every rank, exactly as the gathered arrays do (sums to round-off)."""
    from solver.analysis import density_diagnostics

    sm = solver.sphere_mesh(COMM, 2, refinement=2)
    rng = np.random.default_rng(5)
    rho_all = rng.random(sm.num_cells) * 3.0 - 0.5  # negative too: the minimum's sign
    rho = sm.scatter(rho_all)
    d = density_diagnostics(sm, rho)
    areas, cen = COMM.bcast(sm.gather(sm.areas)), COMM.bcast(sm.gather(sm.centroids))
    assert d[1] == rho_all.min() and d[2] == rho_all.max()
    assert d[0] == pytest.approx(rho_all @ areas, rel=1e-13)
    assert np.allclose(d[3:], (rho_all * areas) @ cen, rtol=1e-12, atol=1e-14)


def test_compiled_split_and_ring_match_their_definitions():
    """``split_tail`` (the cut and the split in compiled passes) keeps exactly the weights at or
    above :func:`tail_cut` (one of them exactly at the cut) and drops the others' sum; the
    compiled ring is the NumPy one (a flagged cell or a flagged neighbour)."""
    from solver.transport import _active as A
    from solver.transport import make_operator
    from solver.velocity._active import split_tail, tail_cut

    rng = np.random.default_rng(2)
    w = np.exp(rng.uniform(-60, 0, 3000))
    w[::9] = 0.0
    for tail in (1e-12, 1e-3):
        theta = tail_cut(w, tail)
        v = w.copy()
        v[5] = theta  # exactly at the cut: kept
        theta = tail_cut(v, tail)
        keep, delta = split_tail(v, tail)
        assert np.array_equal(keep, np.flatnonzero(v >= theta)) and 5 in keep
        assert delta == pytest.approx(v[v < theta].sum(), rel=1e-12) and delta <= tail
    sm = solver.sphere_mesh(COMM, 2, refinement=2)
    act = A.ActiveDG0(make_operator(sm, 0))
    nloc = act.op.rho.x.array.size
    flag = (rng.random(nloc) < 0.05).astype(float)
    ring = A._ring(flag, act._nbr)
    assert np.array_equal(ring, A._ring_numpy(flag, act._nbr))
    assert (flag[: len(ring)] > 0).sum() < ring.sum() < len(ring)


@pytest.mark.parametrize("tail", [1e-12, 1e-3])
def test_active_targets_from_the_gathered_weights_are_the_reduced_ones(tail):
    """``ActiveTargets.from_gathered`` (the cut, the heavy cells and their ring found on the
    whole mesh from the gathered weights, no communication) gives the mask of ``__call__``
    (the cut reduced over the ranks, the ring through the ghosts) and the global count of
    active targets; ``NonlocalField`` takes that path for DG0, with the velocity of the
    reduced path to round-off. Two clusters of vMF tails (light cells of every size)."""
    from solver.transport import NonlocalField, make_operator
    from solver.transport._active import ActiveTargets

    sm = solver.sphere_mesh(COMM, 2, refinement=3)
    op = make_operator(sm, 0)
    bumps = [solver.VonMisesFisher(c, k) for c, k in (((1.0, 0.0, 0.2), 2000.0),
                                                       ((-0.3, 1.0, 0.0), 3000.0))]  # fmt: skip
    init = solver.Mixture(bumps, [0.3, 0.7])
    rho = op.initial_state(init)
    targets = ActiveTargets(op, tail)
    assert targets.keyed
    field = NonlocalField(op, solver.Model(np.eye(3), np.eye(3), np.eye(3)), method="auto",
                          active=tail)  # fmt: skip
    wg = field.eval.gather(op.source_weights(rho))
    mask, count = targets.from_gathered(wg)
    ref = targets(rho)
    assert np.array_equal(mask, ref)
    assert count == COMM.allreduce(int(ref.sum())) and 0 < count < 0.5 * sm.num_cells
    # one heavy cell among light ones: the ring is that cell and its facet neighbours
    lone = sm.scatter(np.where(np.arange(sm.num_cells) == 7, 1.0, 1e-30)) / sm.areas
    mask, count = targets.from_gathered(field.eval.gather(op.source_weights(lone)))
    assert np.array_equal(mask, targets(lone)) and count == 1 + sm.gdim
    field(0.0, 0.0, rho)  # the fast expansion's degree chosen (a full evaluation)
    u = field(0.0, 0.0, rho)
    assert field.eval.report["method"] == "active"
    u_ref = field.eval.evaluate_active(op.source_weights(rho), np.eye(3), np.eye(3), ref)
    assert _close(u, u_ref, rel=1e-14) and np.any(u != 0)


def test_tail_ladder_is_its_definition_at_the_rungs():
    """The compiled ladder of ``tail_cut`` (rungs from the binary exponents, settled by exact
    comparisons) puts every value where ``s[k] = Σ_{v < tail 2^-k} v`` says, values exactly on
    a rung ``tail 2^-k`` and just beside it included (a rung off by one is caught)."""
    from solver.velocity._active import TAIL_LADDER, _nb, tail_cut

    if _nb is None:  # pragma: no cover - without numba
        pytest.skip("numba not installed")
    from solver.velocity._active import _nb_ladder

    rng = np.random.default_rng(7)
    for tail in (1e-12, 0.3, 1.0 / 3.0):
        k = np.arange(TAIL_LADDER + 2)
        rungs = tail * 2.0**-k
        v = np.concatenate([rungs, np.nextafter(rungs, 0), np.nextafter(rungs, 1),
                            tail * np.exp(-rng.uniform(0, 45, 2000)), [0.0, 2 * tail]])  # fmt: skip
        s = np.cumsum(_nb_ladder(v, tail, TAIL_LADDER)[::-1])[::-1]
        ref = np.array([v[v < tail * 2.0**-j].sum() for j in range(TAIL_LADDER + 1)])
        assert np.allclose(s, ref, rtol=1e-12, atol=0)
        theta = tail_cut(v, 40 * tail)
        assert v[v < theta].sum() <= 40 * tail < v[v < 2 * theta].sum() or theta == 40 * tail


def _two_clusters(sm, tail):
    """Two flows' cell averages: two vMF-like clusters (the second shifted in ν) over a light
    dust of ``tail / 2`` of the mass near the south pole."""
    y = sm.centroids / np.linalg.norm(sm.centroids, axis=1)[:, None]
    x0, x1 = solver.normalize(np.array([1.0, 0.2, 0.3])), solver.normalize(np.array([-0.2, 1.0, 0]))

    def density(shift):
        c = np.exp(300 * (y @ x0 - 1)) + 0.7 * np.exp(300 * (y @ solver.normalize(x1 + shift) - 1))
        dust = (y[:, 2] < -0.5).astype(float)
        c /= sm.integrate(c)
        return c + 0.5 * tail * dust / sm.integrate(dust)

    return [density(0.0), density(np.array([0.05, 0.0, 0.1]))]


@pytest.mark.parametrize("tail", [None, 1e-12])
def test_cluster_state_row_with_shared_reductions_is_the_per_flow_one(tail):
    """``ClusterState.__call__`` (both flows side by side: one reduction for both tail cuts,
    the snap's moment sums of both flows together, one for the masses outside and the atoms'
    sums, one gather of the reach's candidates) gives the numbers of the per-flow methods
    ``_heavy``, ``_outside`` and ``_atoms_w2`` (reductions one by one) to round-off, on
    every rank; and ``Diagnostics`` (both flows' sums in one reduction, the extremes in
    another) gives ``density_diagnostics`` and ``drift_diagnostics`` exactly."""
    from solver.analysis import density_diagnostics, drift_diagnostics
    from solver.run import ClusterState, Diagnostics, Snapshots
    from solver.transport import make_operator

    sm = solver.sphere_mesh(COMM, 2, refinement=3)
    avgs = _two_clusters(sm, 1e-12)
    snaps = Snapshots(sm, make_operator(sm, 0), 2, w2=False)
    snaps(avgs)
    cs = ClusterState(sm, 0.1, 1e-2, snaps, tail=tail)
    assert cs(avgs) == [0.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]  # before any clusters
    cs.update([f[-1] for f in snaps.fields] if COMM.rank == 0 else None)
    got = np.array(cs(avgs))
    keeps = [cs._heavy(a) for a in avgs]
    (mb, qb), (m, q) = (cs._outside(avgs[i], cs.labels[i], cs.counts[i], keeps[i])
                        for i in range(2))  # fmt: skip
    y = sm.centroids / np.linalg.norm(sm.centroids, axis=1)[:, None]

    def hull_w2(a, keep):  # solver.atom_moments over the ranks, then solver.hull_w2
        sel = slice(None) if keep is None else keep
        mass, moment = solver.atom_moments(y[sel], (a * sm.areas)[sel], cs.centres)
        mass, moment = COMM.allreduce(mass), COMM.allreduce(moment)
        return solver.hull_w2(mass, moment, cs.centres, cs.hull)

    ref = np.array([float(len(cs.centres)), mb, m, qb, q,
                    *(cs._atoms_w2(avgs[i], keeps[i]) for i in range(2)),
                    *(hull_w2(avgs[i], keeps[i]) for i in range(2))])  # fmt: skip
    print(dict(zip(ClusterState.columns, got - ref, strict=True)))
    assert got[0] >= 2 and 0 < got[2] < 1 and got[1] < got[2]  # the cases are exercised
    assert np.allclose(got, ref, rtol=1e-12, atol=1e-14)
    assert np.array_equal(COMM.bcast(got, root=0), got)
    diag = Diagnostics(sm, True)
    rows, drift = diag._diagnostics(avgs)
    d = [density_diagnostics(sm, a) for a in avgs]
    assert rows == d and drift == drift_diagnostics(sm, d[0], d[1], *avgs)


def test_sparse_region_and_edges_are_the_dense_ones():
    """The flux region from the moving cells' owned neighbours (``_region_sparse``) and the
    facets from the live cells' facets (``_edges_sparse``) are the passes over every cell
    (``_region``, ``_edges``): the same cells and facets, ascending, the same speeds; the
    directional velocity non-zero on part of the region and of the ghosts (where the stage
    puts it). ``ActiveDG0``'s stages on a small region (this path) against the operator's:
    :func:`test_active_dg0_small_and_whole_regions_are_the_operators`."""
    from solver.transport import _active as A
    from solver.transport import make_operator

    sm = solver.sphere_mesh(COMM, 2, refinement=3)
    act = A.ActiveDG0(make_operator(sm, 0))
    rng = np.random.default_rng(11)
    nloc, nown = act.op.u.x.array.size // 3, sm.num_owned
    for frac in (0.003, 0.05):
        ua = rng.normal(size=(nloc, 3)) * (rng.random(nloc) < frac)[:, None]
        ua[rng.random(ua.shape) < 0.4] = 0.0
        mv, F = A._region(ua, act._nbr)
        mv2, ml, F2 = A._region_sparse(ua, nown, *act._adj)
        assert np.array_equal(mv, mv2) and np.array_equal(F, F2)
        assert np.array_equal(ml, np.flatnonzero(mv))
        aa = np.zeros_like(ua)
        on = F[rng.random(F.size) < 0.6]
        aa[on] = rng.normal(size=(on.size, 3))
        ghosts = np.arange(nown, nloc)[rng.random(nloc - nown) < 0.3]
        aa[ghosts] = rng.normal(size=(ghosts.size, 3))
        aa[rng.random(aa.shape) < 0.3] = 0.0
        got = A._edges_sparse(act._plus, act._minus, act._ntf, ua, aa, ml, F2, nown, *act._c2f)
        ref = A._edges(act._plus, act._minus, act._ntf, ua, aa, mv)
        assert np.array_equal(got[0], ref[0]) and 0 < got[0].size < act._plus.size
        for g, r in zip(got[1:], ref[1:], strict=True):
            assert np.array_equal(g, r)
