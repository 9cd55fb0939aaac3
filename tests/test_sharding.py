"""The particle axis split over devices (issue 14), on 4 simulated CPU devices.

tests/scripts/sharded_runs.py runs in its own process (``--xla_force_host_platform_device_count``
must be set before JAX starts, and the rest of the suite stays on one device), queued with
the scripts on the second core; it writes what it measured and these tests assert it.

Tolerances: a sharded run does the same float64 arithmetic as the single-device run except
the order in which f_ρ's sum over particles is added up (local sums, then the all-reduce).
That moves each f_ρ by a few ulps of its terms (~1e-16 relative at N = 16), and the few
steps here amplify it by at most their Lipschitz growth, far below 1e-10; a wrong shard (a
particle lost, doubled, or fed another's noise) moves the state by O(1).
"""

import json

import pytest

TOL = 1e-10
FAMILIES = ("langevin", "sgd", "wfr", "wfr_clone", "mckean_vlasov", "schrodinger_bridge")


@pytest.fixture(scope="module")
def sharded(scripts):
    out = scripts.runs / "sharded.json"  # the path conftest queues it with
    proc = scripts.run(["tests/scripts/sharded_runs.py", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_four_devices(sharded):
    assert sharded["devices"] == 4


@pytest.mark.parametrize("family", FAMILIES)
def test_sharded_run_is_the_single_device_run(sharded, family):
    """Same key, same particles and observables, and the particles come back split over
    the 4 devices along N (an explicit-axes mesh; Langevin on an Auto mesh too)."""
    row = sharded["families"][family]
    for label in ("explicit", "auto") if family == "langevin" else ("explicit",):
        got = row[label]
        assert got["max_abs_diff"] < TOL, (label, got)
        assert got["max_obs_diff"] < TOL, (label, got)
        assert got["spec"] == "P('particles', None)" and got["num_devices"] == 4, (label, got)


def test_a_sharded_start_is_followed(sharded):
    """No mesh= given: a start placed with shard_particles makes the run sharded."""
    got = sharded["families"]["langevin"]["follows_start"]
    assert got["max_abs_diff"] < TOL and got["spec"] == "P('particles', None)", got


def _sized(collectives, size):
    return [c for c in collectives if c[1] == size]


@pytest.mark.parametrize("family,reduced", [("langevin", "P"), ("sgd", 8), ("mckean_vlasov", "P")])
def test_drift_is_local_work_and_one_all_reduce(sharded, family, reduced):
    """The compiled drift (SGD: its jump, with a minibatch of B = 8) contains exactly one
    collective: an all-reduce of the P (or B) floats of f_ρ on the data."""
    size = sharded["num_data"] if reduced == "P" else reduced
    steps = [c[:2] for c in sharded["families"][family]["step_collectives"]]
    assert steps == [["all-reduce", size]], steps


def test_bridge_drift_needs_no_communication(sharded):
    """The bridge's drift reads the frozen f* of ρ*, not f_ρ of the particles: the
    particles do not interact, and its compiled drift has no collective at all."""
    assert sharded["families"]["schrodinger_bridge"]["step_collectives"] == []


@pytest.mark.parametrize("family", ["wfr", "wfr_clone"])
def test_weighted_step_has_one_all_reduce_of_f(sharded, family):
    """A weighted step reduces f_ρ once too; its other collectives carry O(N) numbers (the
    weights' normaliser, Λ̄, the KDE's cloud and, for clone/kill, the gather of the
    (N, width) state that copies a clone from any device), never a P-sized one again."""
    steps = sharded["families"][family]["step_collectives"]
    n, p = sharded["num_particles"], sharded["num_data"]
    assert [c[0] for c in _sized(steps, p)] == ["all-reduce"], steps
    width = 13  # D = 5 and the weight, birth, death and previous-noise columns
    assert all(c[1] <= 2 * n * width for c in steps), steps


def test_langevin_solve_reduces_f_once_per_step(sharded):
    """The whole compiled Langevin solve (LM steps, saves, divergence event): one P-float
    all-reduce in the loop, the rest scalars (finiteness, step counts) and one gather of
    the final (N, D) state at the end, outside the loop."""
    coll = sharded["langevin_solve_collectives"]
    p, n = sharded["num_data"], sharded["num_particles"]
    assert [c[0] for c in _sized(coll, p)] == ["all-reduce"], coll
    others = [c for c in coll if c[1] != p]
    assert all(c[1] == 1 or (c[0] == "all-gather" and c[1] == n * 5) for c in others), coll
    loop = [c for c in coll if c[1] == p][0][2]
    assert not any(c[0] == "all-gather" and c[2] == loop for c in coll), coll


def test_two_processes_run_the_single_process_trajectory(sharded):
    """2 processes x 2 devices (jax.distributed, gloo): one Langevin run on the particles
    split over all 4 devices equals the single-process run; a checkpointed run (process 0
    writes, both resume) equals its single-process twin and resumes exactly; the ArviZ
    posterior gathered from the shards is the single-process one. mfsde's persistent
    compilation cache is off in both: a cached multi-process executable deadlocked its first
    all-reduce."""
    mp = sharded["multi_process"]
    assert mp["returncodes"] == [0, 0], mp["logs"]
    assert mp["cache_dirs"] == ["None", "None"], mp
    assert (mp["processes"], mp["devices"], mp["local_devices"]) == (2, 4, 2), mp
    assert mp["spec"] == "P('particles', None)", mp
    for name in ("max_abs_diff", "risk_diff", "checkpointed_diff", "idata_diff"):
        assert mp[name] < TOL, (name, mp)
    assert mp["resumed_diff"] == 0.0, mp
