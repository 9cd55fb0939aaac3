"""Bad inputs are refused at the boundary, with the user's argument name (issue 12 §2).

Table-driven: for each public function, each bad input and the argument its error must
name. Every case fails before any compilation, so the table is cheap.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mfsde


def _cases(fe, p0, x, y):
    k = jax.random.key(0)
    nan = p0.at[0, 0].set(jnp.nan)
    wrong = p0[:, :2]
    empty = p0[:0]
    out = fe.output(p0)
    ts = np.linspace(0.0, 1.0, 20)
    vals = np.ones(20)
    return [
        ("FreeEnergy", lambda: mfsde.FreeEnergy(fe.unit, x, y[:3], beta=1.0), ValueError, "y"),
        ("FreeEnergy", lambda: mfsde.FreeEnergy(fe.unit, x, y, beta=0.0), ValueError, "beta"),
        ("FreeEnergy", lambda: mfsde.FreeEnergy(fe.unit, x, y, beta=-1.0), ValueError, "beta"),
        ("FreeEnergy", lambda: mfsde.FreeEnergy(fe.unit, x.at[0, 0].set(jnp.inf), y, beta=1.0), ValueError, "x"),
        ("FreeEnergy", lambda: mfsde.FreeEnergy(fe.unit, x, y, beta=1.0, chunk_size=0), ValueError, "chunk_size"),
        ("output", lambda: fe.output(wrong), ValueError, "particles"),
        ("risk", lambda: fe.risk(empty[:, :2]), ValueError, "particles"),
        ("langevin", lambda: mfsde.langevin(fe, k, wrong, t1=1.0, dt0=0.1), ValueError, "particles"),
        ("langevin", lambda: mfsde.langevin(fe, k, nan, t1=1.0, dt0=0.1), ValueError, "particles0"),
        ("langevin", lambda: mfsde.langevin(fe, k, p0, t1=1.0, dt0=-0.1), ValueError, "dt0"),
        ("langevin", lambda: mfsde.langevin(fe, k, p0, t1=1.0, dt0=0.1, mesh="cpu"), TypeError, "mesh"),
        ("langevin", lambda: mfsde.langevin(fe, k, p0, t1=1.0, dt0=0.1, mesh=jax.make_mesh((1,), ("x",))),
         ValueError, "mesh"),
        ("shard_particles", lambda: mfsde.shard_particles(p0[0]), ValueError, "particles"),
        ("shard_particles", lambda: mfsde.shard_particles(p0, jax.make_mesh((1,), ("x",))), ValueError, "axis"),
        ("langevin", lambda: mfsde.langevin(fe, k, p0, t1=-1.0, dt0=0.1), ValueError, "t1"),
        ("langevin", lambda: mfsde.langevin(fe, 3, p0, t1=1.0, dt0=0.1), TypeError, "key"),
        ("langevin", lambda: mfsde.langevin(fe, k, p0, t1=1.0, dt0=0.1, ts=[0.5, 0.2]), ValueError, "ts"),
        ("langevin", lambda: mfsde.langevin(fe, k, p0, t1=1.0, dt0=0.1, ts=[0.5, 1.001]), ValueError, "ts"),
        ("langevin", lambda: mfsde.langevin(fe, k, p0, t1=1.0, dt0=0.1, checkpoint_every=5), ValueError,
         "checkpoint_path"),
        ("wfr", lambda: mfsde.wfr(fe, k, wrong, t1=1.0, dt0=0.1, alpha=1.0), ValueError, "particles"),
        ("wfr", lambda: mfsde.wfr(fe, k, nan, t1=1.0, dt0=0.1, alpha=1.0), ValueError, "particles0"),
        ("wfr", lambda: mfsde.wfr(fe, k, p0, t1=1.0, dt0=0.1, alpha=-1.0), ValueError, "alpha"),
        ("wfr", lambda: mfsde.wfr(fe, k, p0, t1=1.0, dt0=0.0, alpha=1.0), ValueError, "dt0"),
        ("wfr", lambda: mfsde.wfr(fe, k, p0, t1=1.0, dt0=0.1, alpha=1.0, birth_death="kill"), ValueError,
         "birth_death"),
        ("wfr", lambda: mfsde.wfr(fe, k, p0, t1=1.0, dt0=0.1, alpha=1.0, bandwidth=0.0), ValueError, "bandwidth"),
        ("wfr", lambda: mfsde.wfr(fe, k, p0, t1=1.0, dt0=0.1, alpha=1.0, penalty=("c", 1.0, 3.0)), ValueError,
         "penalty"),
        ("wfr", lambda: mfsde.wfr(fe, k, mfsde.Particles(p0, jnp.arange(8.0)), t1=1.0, dt0=0.1, alpha=1.0,
                                  birth_death="clone"), ValueError, "resample"),
        ("wfr", lambda: mfsde.wfr(fe, 3, p0, t1=1.0, dt0=0.1, alpha=1.0), TypeError, "key"),
        ("sgd", lambda: mfsde.sgd(fe, k, p0, num_steps=0, step_size=0.1), ValueError, "num_steps"),
        ("sgd", lambda: mfsde.sgd(fe, k, p0, num_steps=10, step_size=0.0), ValueError, "step_size"),
        ("sgd", lambda: mfsde.sgd(fe, k, p0, num_steps=10, step_size=0.1, batch_size=0), ValueError, "batch_size"),
        ("sgd", lambda: mfsde.sgd(fe, k, p0, num_steps=10, step_size=0.1, save_every=0), ValueError, "save_every"),
        ("sgd", lambda: mfsde.sgd(fe, k, nan, num_steps=10, step_size=0.1), ValueError, "particles0"),
        ("sgd", lambda: mfsde.sgd(fe, k, p0, num_steps=10, step_size=0.1, sampler=3), TypeError, "sampler"),
        ("mckean_vlasov", lambda: mfsde.mckean_vlasov(fe, k, 0), ValueError, "num_particles"),
        ("schrodinger_bridge", lambda: mfsde.schrodinger_bridge(fe, fe.output(p0)[:3], k, 8), ValueError, "output"),
        ("schrodinger_bridge", lambda: mfsde.schrodinger_bridge(fe, fe.output(p0), k, 8, num_inner=6), ValueError,
         "num_inner"),
        ("schrodinger_bridge", lambda: mfsde.schrodinger_bridge(fe, fe.output(p0), k, 8, estimator="x"), ValueError,
         "estimator"),
        ("sample_particle_posterior", lambda: mfsde.sample_particle_posterior(fe, k, 0), ValueError, "num_particles"),
        ("sample_particle_posterior", lambda: mfsde.sample_particle_posterior(fe, k, 4, num_chains=0), ValueError,
         "num_chains"),
        ("sample_particle_posterior", lambda: mfsde.sample_particle_posterior(fe, k, 4, kernel="gibbs"), ValueError,
         "kernel"),
        ("kl_to_prior", lambda: mfsde.kl_to_prior(empty, fe), ValueError, "particles"),
        ("kl_to_prior", lambda: mfsde.kl_to_prior(wrong, fe), ValueError, "particles"),
        ("w2", lambda: mfsde.w2(p0, wrong), ValueError, "dimensions"),
        ("w2", lambda: mfsde.w2(nan, p0), ValueError, "p"),
        ("w2_to_prior", lambda: mfsde.w2_to_prior(nan, fe), ValueError, "particles"),
        ("Particles", lambda: mfsde.Particles(p0, jnp.zeros(3)), ValueError, "log_weight"),
        ("Particles", lambda: mfsde.Particles(p0[0]), ValueError, "theta"),
        ("stein_residual", lambda: mfsde.stein_residual(fe, p0, jax.random.split(k, 2)), ValueError, "key"),
        ("sample_fixed_point", lambda: mfsde.sample_fixed_point(fe, k, tol=-1.0), ValueError, "tol"),
        ("sample_fixed_point", lambda: mfsde.sample_fixed_point(fe, k, max_iter=0), ValueError, "max_iter"),
        ("sample_fixed_point", lambda: mfsde.sample_fixed_point(fe, k, damping=0.0), ValueError, "damping"),
        ("sample_fixed_point", lambda: mfsde.sample_fixed_point(fe, k, output0=out[:3]), ValueError, "output0"),
        ("sample_fixed_point", lambda: mfsde.sample_fixed_point(fe, k, num_chains=0), ValueError, "num_chains"),
        ("sample_fixed_point", lambda: mfsde.sample_fixed_point(fe, 3), TypeError, "key"),
        ("sample_gibbs", lambda: mfsde.sample_gibbs(fe, k, out[:3], p0[:2]), ValueError, "output"),
        ("sample_gibbs", lambda: mfsde.sample_gibbs(fe, k, out, p0[:2, :2]), ValueError, "init"),
        ("sample_gibbs", lambda: mfsde.sample_gibbs(fe, k, out.at[0].set(jnp.nan), p0[:2]), ValueError, "output"),
        ("gibbs_log_normalizer", lambda: mfsde.gibbs_log_normalizer(fe, k, out, num_particles=1), ValueError,
         "num_particles"),
        ("gibbs_log_normalizer", lambda: mfsde.gibbs_log_normalizer(fe, k, out, target_ess=2.0), ValueError,
         "target_ess"),
        ("gibbs_log_normalizer", lambda: mfsde.gibbs_log_normalizer(fe, k, out[:3]), ValueError, "output"),
        ("check_fixed_point", lambda: mfsde.check_fixed_point(fe, k, wrong), ValueError, "particles"),
        ("check_fixed_point", lambda: mfsde.check_fixed_point(fe, k, p0, level=2.0), ValueError, "level"),
        ("check_fixed_point", lambda: mfsde.check_fixed_point(fe, k, nan), ValueError, "particles"),
        ("self_consistency", lambda: mfsde.self_consistency(fe, p0, p0), ValueError, "draws"),
        ("self_consistency", lambda: mfsde.self_consistency(fe, wrong, p0[None]), ValueError, "particles"),
        ("stein_test", lambda: mfsde.stein_test(3), TypeError, "traj"),
        ("particle_logdensity", lambda: mfsde.particle_logdensity(fe, 0), ValueError, "num_particles"),
        ("load_model", lambda: mfsde.load_model("/nonexistent/model.py"), FileNotFoundError, "path"),
        ("enable_compilation_cache", lambda: mfsde.enable_compilation_cache(3), TypeError, "path"),
        ("UnitModel", lambda: mfsde.UnitModel(3, x), TypeError, "unit"),
        ("overdispersed_starts", lambda: mfsde.overdispersed_starts(fe, k, 0, 8), ValueError, "num_replicates"),
        ("overdispersed_starts", lambda: mfsde.overdispersed_starts(fe, k, 2, 8, spread=-1.0), ValueError, "spread"),
        ("overdispersed_starts", lambda: mfsde.overdispersed_starts(fe, k, 2, 0), ValueError, "num_particles"),
        ("curvature_defect", lambda: mfsde.curvature_defect(fe, wrong, k), ValueError, "particles"),
        ("curvature_defect", lambda: mfsde.curvature_defect(fe, nan, k), ValueError, "particles"),
        ("curvature_defect", lambda: mfsde.curvature_defect(fe, p0, k, rel_step=0.0), ValueError, "rel_step"),
        ("curvature_defect", lambda: mfsde.curvature_defect(fe, p0, k, num_probes=0), ValueError, "num_probes"),
        ("curvature_defect", lambda: mfsde.curvature_defect(fe, p0, jax.random.split(k, 2)), ValueError, "key"),
        ("max_curvature", lambda: mfsde.max_curvature(fe, wrong), ValueError, "particles"),
        ("max_curvature", lambda: mfsde.max_curvature(fe, p0, num_iterations=0), ValueError, "num_iterations"),
        ("transport_map", lambda: mfsde.transport_map(fe, wrong, k), ValueError, "target"),
        ("transport_map", lambda: mfsde.transport_map(fe, nan, k), ValueError, "target"),
        ("transport_map", lambda: mfsde.transport_map(fe, p0, k, epsilon=-1.0), ValueError, "epsilon"),
        ("transport_map", lambda: mfsde.transport_map(fe, p0, k, num_source=1), ValueError, "num_source"),
        ("value_function", lambda: mfsde.value_function(fe, out, k, num_inner=6, samples=p0, log_normalizer=0.0),
         ValueError, "num_inner"),
        ("value_function", lambda: mfsde.value_function(fe, out, k, num_inner=4, samples=p0, log_normalizer=0.0)(
            wrong, 0.5), ValueError, "w"),
        ("value_function", lambda: mfsde.value_function(fe, out, k, num_inner=4, samples=p0, log_normalizer=0.0)(
            p0, 1.5), ValueError, "t"),
        ("value_function", lambda: mfsde.value_function(fe, out[:3], k, samples=p0, log_normalizer=0.0), ValueError,
         "(P,)"),
        ("optimality_certificate", lambda: mfsde.optimality_certificate(fe, k, wrong), ValueError, "particles"),
        ("optimality_certificate", lambda: mfsde.optimality_certificate(fe, k, p0, num_smc_runs=1), ValueError,
         "num_smc_runs"),
        ("potential_curvature", lambda: mfsde.potential_curvature(fe, out, wrong), ValueError, "points"),
        ("caffarelli_bound", lambda: mfsde.caffarelli_bound(fe, out, wrong), ValueError, "points"),
        ("to_inference_data", lambda: mfsde.to_inference_data(3, fe), TypeError, "result"),
        ("to_inference_data", lambda: mfsde.to_inference_data(p0, 3), TypeError, "fe"),
        ("summary", lambda: mfsde.summary(3), TypeError, "idata"),
        ("convergence", lambda: mfsde.convergence(p0), TypeError, "idata"),
        ("equilibration", lambda: mfsde.equilibration(vals, ts[:5]), ValueError, "values"),
        ("equilibration", lambda: mfsde.equilibration(vals, ts[::-1]), ValueError, "ts"),
        ("stationarity", lambda: mfsde.stationarity(vals, ts[:5]), ValueError, "values"),
        ("stationarity", lambda: mfsde.stationarity(vals, ts, rel_tol=-1), ValueError, "rel_tol"),
        ("entropy_knn", lambda: mfsde.entropy_knn(p0, k=0), ValueError, "k"),
        ("entropy_knn", lambda: mfsde.entropy_knn(p0[:1]), ValueError, "x"),
        ("entropy_knn", lambda: mfsde.entropy_knn(nan), ValueError, "x"),
        ("w2_gaussian", lambda: mfsde.w2_gaussian(p0, wrong), ValueError, "dimensions"),
        ("w2_gaussian", lambda: mfsde.w2_gaussian(nan, p0), ValueError, "p"),
        ("w2_gaussian", lambda: mfsde.w2_gaussian(p0, p0[:1]), ValueError, "q"),
        ("w2_to_prior_bound", lambda: mfsde.w2_to_prior_bound(wrong, fe), ValueError, "particles"),
        ("save", lambda: mfsde.save(3, "/tmp/never.nc"), TypeError, "idata"),
        ("load", lambda: mfsde.load("/nonexistent/run.nc"), FileNotFoundError, "path"),
        ("plot_marginals", lambda: mfsde.plot_marginals(3, fe), TypeError, "idata"),
        ("plot_observables", lambda: mfsde.plot_observables(3), TypeError, "idata"),
        ("ParticleSDE", lambda: mfsde.ParticleSDE(drift=3), TypeError, "drift"),
        ("ParticleSDE", lambda: mfsde.ParticleSDE(), ValueError, "drift"),
        ("ParticleSDE", lambda: mfsde.ParticleSDE(drift=lambda t, y, a: y, jump_every=0), ValueError, "jump_every"),
    ]


def test_degenerate_sizes_are_refused(small):
    """N = 0 (no law), N too small for a covariance or a nearest neighbour, P = 0: each
    refused with its argument named and the size it got, before anything runs."""
    fe, p0 = small
    k = jax.random.key(0)
    cases = [
        (lambda: mfsde.langevin(fe, k, p0[:0], t1=1.0, dt0=0.1), "particles0", "N = 0"),
        (lambda: mfsde.sgd(fe, k, p0[:0], num_steps=3, step_size=0.1), "particles0", "N = 0"),
        (lambda: mfsde.wfr(fe, k, p0[:0], t1=1.0, dt0=0.1, alpha=1.0), "particles0", "N = 0"),
        (lambda: mfsde.langevin(fe, k, p0[:1], t1=1.0, dt0=0.1, diagnostics=True), "particles0", "N = 1"),
        (lambda: fe.output(p0[:0]), "particles", "N = 0"),
        (lambda: mfsde.max_curvature(fe, p0[:0]), "particles", "N = 0"),
        (lambda: mfsde.to_inference_data(p0[:0], fe), "result", "N = 0"),
        (lambda: mfsde.kl_to_prior(p0[:1], fe), "particles", "N = 1"),
        (lambda: mfsde.w2_to_prior_bound(p0[:1], fe), "particles", "N = 1"),
        (lambda: mfsde.self_consistency(fe, p0[:1], p0[None]), "particles", "N = 1"),
        (lambda: mfsde.check_fixed_point(fe, k, p0[:1]), "particles", "N = 1"),
        (lambda: mfsde.FreeEnergy(fe.unit, fe.x[:0], fe.y[:0], beta=1.0), "x", "P >= 1"),
    ]
    for i, (call, argument, size) in enumerate(cases):
        with pytest.raises(ValueError) as info:
            call()
        assert argument in str(info.value) and size in str(info.value), (i, str(info.value))
    # a single particle runs when nothing asks for a neighbour
    assert mfsde.langevin(fe, k, p0[:1], t1=0.2, dt0=0.1, progress=False).particles.shape == (1, fe.dim)


def test_bad_inputs_name_their_argument(small):
    fe, p0 = small
    cases = _cases(fe, p0, fe.x, fe.y)
    for name, call, error, argument in cases:
        with pytest.raises(error) as info:
            call()
        assert argument in str(info.value), f"{name}: {argument!r} not named in {info.value!r}"
    per_function = {}
    for name, *_ in cases:
        per_function[name] = per_function.get(name, 0) + 1
    # every public function is in the table (classes that only hold results are not)
    callables = {n for n in mfsde.__all__ if callable(getattr(mfsde, n)) and not isinstance(getattr(mfsde, n), type)}
    missing = callables - set(per_function)
    assert not missing, f"public functions without bad-input cases: {sorted(missing)}"
    assert len(cases) >= 83  # the table only grows
