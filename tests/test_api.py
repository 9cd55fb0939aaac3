"""A walk over every public name of mfsde (issue 11's contract).

For each function the table says, and the tests check:
- jit: it runs under ``jax.jit`` (traced key, and traced particles where it takes them) and
  agrees with the eager call to float64 rounding — or the reason it cannot, and then it
  must indeed fail under jit (so the table cannot go stale);
- keys: a batch of keys gives replicates (the dynamics families; tests/test_keys.py checks
  that replicate r is the run with key r, and raw keys, for each of them) — or the reason
  it cannot, and then a batch raises a ValueError that says what the function's
  replicates are; a raw ``PRNGKey`` gives what its typed twin gives;
- idata: its result goes through ``to_inference_data`` and ``save``/``load`` unchanged —
  or the reason it has no DataTree.
Every result type is a pure pytree (strings in static fields): it passes through jit.
Sizes are the smallest that run each code path (N = 8, P = 20, a few steps).
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mfsde

LANGEVIN = dict(t1=0.4, dt0=0.1, ts=[0.0, 0.2, 0.4], diagnostics=True)
HOST = "host-side post-processing (ArviZ / xarray / numpy statistics) of a finished run"
SCALAR = "returns a scalar or a function, not a sample"


class Entry(NamedTuple):
    call: Callable  # call(key, particles) -> result
    jit: bool | str = True
    keys: bool | str | None = None  # None: takes no key
    idata: bool | str = SCALAR


@pytest.fixture(scope="module")
def setup(neuron):
    x, y = neuron.make_data(jax.random.key(0), num_data=20, dim=2)
    fe = mfsde.FreeEnergy(neuron.unit, x, y, beta=20.0)
    p0 = fe.prior_sample(jax.random.key(1), 8)
    pool = fe.prior_sample(jax.random.key(2), 16)
    traj = mfsde.langevin(fe, jax.random.key(3), p0, **LANGEVIN)
    idata = mfsde.to_inference_data(traj, fe)
    return fe, p0, pool, traj, idata


def _run(traj, p):
    """The trajectory, its arrays tied to ``p`` (unchanged values; traced under jit)."""
    return jax.tree.map(lambda a: a + 0 * jnp.sum(p).astype(a.dtype), traj)


def _table(fe, p0, pool, traj, idata):
    mcmc = dict(num_warmup=10, num_samples=10)
    chains = "its replicates are its num_chains chains, drawn from one key"
    return {
        "langevin": Entry(lambda k, p: mfsde.langevin(fe, k, p, **LANGEVIN), keys=True, idata=True),
        "sgd": Entry(lambda k, p: mfsde.sgd(fe, k, p, num_steps=6, step_size=0.05, batch_size=5, save_every=3),
                     keys=True, idata=True),
        "mckean_vlasov": Entry(lambda k, p: mfsde.mckean_vlasov(fe, k, 8, dt0=0.25), keys=True, idata=True),
        "wfr": Entry(lambda k, p: mfsde.wfr(fe, k, p, t1=0.5, dt0=0.25, alpha=1.0, birth_death="clone"), keys=True,
                     idata=True),
        "schrodinger_bridge": Entry(
            lambda k, p: mfsde.schrodinger_bridge(fe, fe.output(p0), k, 8, dt0=0.25, num_inner=4, samples=pool,
                                                  log_normalizer=0.0), keys=True, idata=True),
        "sample_gibbs": Entry(lambda k, p: mfsde.sample_gibbs(fe, k, fe.output(p), p[:2], **mcmc),
                              keys="its replicates are the chains, one per row of init", idata=True),
        "sample_fixed_point": Entry(lambda k, p: mfsde.sample_fixed_point(fe, k, num_chains=2, max_iter=1, **mcmc),
                                    jit="iterates to a tolerance in Python (each round one jitted MCMC run), "
                                        "and reports its rounds as numpy arrays", keys=chains, idata=True),
        "check_fixed_point": Entry(lambda k, p: mfsde.check_fixed_point(fe, k, p, num_chains=2, diagnose=False, **mcmc),
                                   jit="its verdict is Python control flow on MCMC statistics (and may rerun "
                                       "the dynamics)", keys="it checks the replicate runs of one trajectory",
                                   idata=True),
        "sample_particle_posterior": Entry(lambda k, p: mfsde.sample_particle_posterior(fe, k, 4, num_chains=2, **mcmc),
                                           keys=chains, idata=True),
        "gibbs_log_normalizer": Entry(lambda k, p: mfsde.gibbs_log_normalizer(fe, k, fe.output(p), num_particles=64),
                                      jit="adaptive tempering picks its temperatures on the host",
                                      keys="one SMC run of num_particles particles", idata=True),
        "stein_residual": Entry(lambda k, p: mfsde.stein_residual(fe, p, k), keys="one Hutchinson probe per call"),
        "curvature_defect": Entry(lambda k, p: mfsde.curvature_defect(fe, p, k, num_probes=2),
                                  jit="its mean and standard error over the particles are numpy on the host",
                                  keys="one set of difference probes per call"),
        "particle_logdensity": Entry(lambda k, p: mfsde.particle_logdensity(fe, 8)(p.reshape(-1))),
        "self_consistency": Entry(lambda k, p: mfsde.self_consistency(fe, p, pool[None], key=k),
                                  jit="its statistic's null distribution and p-values are numpy on the host",
                                  keys="a key picks the projections of one statistic"),
        "overdispersed_starts": Entry(lambda k, p: mfsde.overdispersed_starts(fe, k, 2, 8),
                                      keys="one key makes all the replicates' starts", idata=True),
        "max_curvature": Entry(lambda k, p: mfsde.max_curvature(fe, p, k), keys="one power iteration"),
        "transport_map": Entry(lambda k, p: mfsde.transport_map(fe, pool + jnp.mean(p), k),
                               jit="Sinkhorn's convergence and the default epsilon are read on the host",
                               keys="one prior sample is the map's source"),
        "value_function": Entry(lambda k, p: mfsde.value_function(fe, fe.output(p), k, num_inner=4, samples=pool,
                                                                  log_normalizer=0.0)(p, 0.5),
                                keys="one set of inner draws, the same at every call"),
        "optimality_certificate": Entry(lambda k, p: mfsde.optimality_certificate(fe, k, p, num_smc_runs=2,
                                                                                  num_smc_particles=64),
                                        jit="log Z is adaptive tempered SMC, which picks its temperatures on the host",
                                        keys="its num_smc_runs SMC runs are drawn from one key"),
        "potential_curvature": Entry(lambda k, p: mfsde.potential_curvature(fe, fe.output(p0), p)),
        "caffarelli_bound": Entry(lambda k, p: mfsde.caffarelli_bound(fe, fe.output(p0), p),
                                  jit="its bound is host arithmetic on the curvature's extremes"),
        "kl_to_prior": Entry(lambda k, p: mfsde.kl_to_prior(p, fe)),
        "entropy_knn": Entry(lambda k, p: mfsde.entropy_knn(p)),
        "w2_gaussian": Entry(lambda k, p: mfsde.w2_gaussian(p, pool)),
        "w2_to_prior_bound": Entry(lambda k, p: mfsde.w2_to_prior_bound(p, fe)),
        "w2": Entry(lambda k, p: mfsde.w2(p, pool), jit="exact OT is POT's network simplex, on the host"),
        "w2_to_prior": Entry(lambda k, p: mfsde.w2_to_prior(p, fe, k), jit="exact OT is POT's network simplex, on "
                             "the host", keys="one prior sample to compare with"),
        # a finished run's outputs; under jit they are traced (``_run``), which host code cannot read
        "to_inference_data": Entry(lambda k, p: mfsde.to_inference_data(_run(traj, p), fe), jit=HOST),
        "summary": Entry(lambda k, p: mfsde.summary(mfsde.to_inference_data(_run(traj, p), fe), fe), jit=HOST),
        "convergence": Entry(lambda k, p: mfsde.convergence(mfsde.to_inference_data(_run(traj, p), fe)), jit=HOST),
        "equilibration": Entry(lambda k, p: mfsde.equilibration(_run(traj, p).observables["risk"], traj.ts),
                               jit=HOST),
        "stationarity": Entry(lambda k, p: mfsde.stationarity(_run(traj, p).observables["risk"], traj.ts),
                              jit=HOST),
        "stein_test": Entry(lambda k, p: mfsde.stein_test(_run(traj, p)), jit=HOST),
        "save": Entry(None, jit="writes a file"),
        "load": Entry(None, jit="reads a file"),
        "plot_marginals": Entry(None, jit="draws a matplotlib figure"),
        "plot_observables": Entry(None, jit="draws a matplotlib figure"),
        "load_model": Entry(None, jit="imports a Python file"),
        "enable_compilation_cache": Entry(None, jit="configures JAX's compilation cache"),
        "new_programs": Entry(None, jit="a context that lists the programs JAX lowers"),
        "shard_particles": Entry(lambda k, p: mfsde.shard_particles(p),
                                 idata="places the particles on devices; the values are its input's"),
    }


# Result types and components: checked as pytrees through jit, not called.
TYPES = {"OptimalityCertificate", "TransportMap", "CaffarelliBound", "ValueFunction", "GibbsFlow", "Trajectory", "Run", "FixedPoint", "FixedPointCheck", "GibbsNormalizer", "ParticlePosterior", "SelfConsistency",
         "SteinTest", "CurvatureDefect", "FreeEnergy", "UnitModel", "ParticleSDE", "LeimkuhlerMatthews", "Particles", "DivergenceError"}


def test_every_public_name_is_walked(setup):
    table = _table(*setup)
    assert set(mfsde.__all__) == set(table) | TYPES, set(mfsde.__all__) ^ (set(table) | TYPES)
    for name, e in table.items():
        for reason in (e.jit, e.keys, e.idata):
            assert reason in (True, None) or (isinstance(reason, str) and len(reason) > 10), name


_CALLED = [n for n in ("langevin", "sgd", "wfr", "mckean_vlasov", "schrodinger_bridge", "sample_gibbs", "sample_fixed_point",
                       "check_fixed_point", "sample_particle_posterior", "gibbs_log_normalizer", "stein_residual",
                       "curvature_defect", "particle_logdensity", "self_consistency", "overdispersed_starts", "max_curvature",
                       "kl_to_prior", "entropy_knn", "w2_gaussian", "w2_to_prior_bound", "w2", "w2_to_prior",
                       "to_inference_data", "summary", "convergence", "equilibration", "stationarity", "stein_test",
                       "transport_map", "value_function", "potential_curvature", "caffarelli_bound",
                       "optimality_certificate")]


_RESULTS = {}  # eager results, reused by test_results_are_pytrees


def _arrays(tree):
    return [np.asarray(a) for a in jax.tree.leaves(tree) if isinstance(a, (jax.Array, np.ndarray, float, int))]


@pytest.mark.parametrize("name", _CALLED)
def test_jit_keys_and_inference_data(setup, name, tmp_path):
    fe, p0 = setup[0], setup[1]
    e = _table(*setup)[name]
    key = jax.random.key(7)
    eager = e.call(key, p0)
    _RESULTS[name] = eager
    # jit, or the stated reason and a failure under jit
    if e.jit is True:
        jitted = jax.jit(e.call)(key, p0)
        for a, b in zip(_arrays(eager), _arrays(jitted), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)
    else:
        with pytest.raises(Exception):
            jax.jit(e.call)(key, p0)
    # keys: raw keys work; a batch says what the replicates are (families: test_keys.py)
    if e.keys is True:
        from test_keys import FAMILIES

        assert name in FAMILIES
    elif e.keys is not None:
        raw = e.call(jax.random.key_data(key), p0)
        for a, b in zip(_arrays(eager), _arrays(raw), strict=True):
            np.testing.assert_array_equal(a, b)
        with pytest.raises(ValueError, match="must be a single key here"):
            e.call(jax.random.split(key, 2), p0)
    # results as DataTrees, through save and load unchanged
    if e.idata is True:
        tree = mfsde.to_inference_data(eager, fe)
        back = mfsde.load(mfsde.save(tree, tmp_path / f"{name}.nc"))
        assert set(back.children) == set(tree.children)
        for group in tree.children:
            for var, values in tree[group].to_dataset().data_vars.items():
                np.testing.assert_array_equal(back[group][var].values, values.values, err_msg=f"{group}/{var}")
        assert "posterior" in tree.children


def test_results_are_pytrees(setup):
    fe, p0, pool, traj, idata = setup
    mcmc = dict(num_warmup=10, num_samples=10)
    calls = {"sample_fixed_point": lambda: mfsde.sample_fixed_point(fe, jax.random.key(1), num_chains=2, max_iter=1,
                                                                    **mcmc),
             "check_fixed_point": lambda: mfsde.check_fixed_point(fe, jax.random.key(2), p0, num_chains=2,
                                                                  diagnose=False, **mcmc),
             "sample_particle_posterior": lambda: mfsde.sample_particle_posterior(fe, jax.random.key(3), 4,
                                                                                  num_chains=2, **mcmc),
             "gibbs_log_normalizer": lambda: mfsde.gibbs_log_normalizer(fe, jax.random.key(4), fe.output(p0),
                                                                        num_particles=64)}
    results = [traj, mfsde.Particles(p0, jnp.zeros(8))] + [_RESULTS[k] if k in _RESULTS else f() for k, f in calls.items()]
    for r in results:
        leaves = jax.tree.leaves(r)
        assert leaves and not any(isinstance(a, str) for a in leaves), type(r).__name__
        back = jax.jit(lambda t: t)(r)
        assert type(back) is type(r)
        for a, b in zip(_arrays(r), _arrays(back), strict=True):
            np.testing.assert_array_equal(a, b)
    check = results[3]
    assert isinstance(check, mfsde.FixedPointCheck)
    assert jax.jit(lambda c: c)(check).reason == check.reason  # static strings survive
