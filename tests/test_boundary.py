"""Bad inputs are refused at the boundary, with the user's argument name (issue 12 §2).

Table-driven: for each public function, each bad input and the argument its error must
name. Every case fails before any compilation, so the table is cheap.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mfsde


@pytest.fixture(scope="module")
def small(neuron):
    x, y = neuron.make_data(jax.random.key(0), num_data=20, dim=2)
    fe = mfsde.FreeEnergy(neuron.unit, x, y, beta=20.0)
    return fe, fe.prior_sample(jax.random.key(1), 8), x, y


def _cases(fe, p0, x, y):
    k = jax.random.key(0)
    nan = p0.at[0, 0].set(jnp.nan)
    wrong = p0[:, :2]
    empty = p0[:0]
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
        ("langevin", lambda: mfsde.langevin(fe, k, p0, t1=-1.0, dt0=0.1), ValueError, "t1"),
        ("langevin", lambda: mfsde.langevin(fe, 3, p0, t1=1.0, dt0=0.1), TypeError, "key"),
        ("langevin", lambda: mfsde.langevin(fe, k, p0, t1=1.0, dt0=0.1, ts=[0.5, 0.2]), ValueError, "ts"),
        ("langevin", lambda: mfsde.langevin(fe, k, p0, t1=1.0, dt0=0.1, checkpoint_every=5), ValueError,
         "checkpoint_path"),
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
    ]


def test_bad_inputs_name_their_argument(small):
    cases = _cases(*small)
    for name, call, error, argument in cases:
        with pytest.raises(error) as info:
            call()
        assert argument in str(info.value), f"{name}: {argument!r} not named in {info.value!r}"
    per_function = {}
    for name, *_ in cases:
        per_function[name] = per_function.get(name, 0) + 1
    assert len(per_function) >= 13 and len(cases) >= 35  # the table only grows
