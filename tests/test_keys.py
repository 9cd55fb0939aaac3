"""Every dynamics family takes one key or a batch of keys (replicates), typed or raw (float64).

Replicate r of a batched run is the same computation as the single run with key r, vmapped,
so they agree to float64 rounding (rtol 1e-10); a raw ``PRNGKey`` and its typed twin
(``wrap_key_data``) draw the same numbers, so they agree exactly.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mfsde


def _families(fe, p0):
    output = fe.output(p0)
    pool = fe.prior_sample(jax.random.key(2), 16)
    return {
        "langevin": lambda k: mfsde.langevin(fe, k, p0, t1=1.0, dt0=0.1, diagnostics=False),
        "sgd": lambda k: mfsde.sgd(fe, k, p0, num_steps=20, step_size=0.05, batch_size=5, save_every=5),
        "mckean_vlasov": lambda k: mfsde.mckean_vlasov(fe, k, 8, dt0=0.1),
        # with the pool and log Z given, nothing is shared between replicates but the inputs
        "schrodinger_bridge": lambda k: mfsde.schrodinger_bridge(fe, output, k, 8, dt0=0.1, num_inner=4, samples=pool,
                                                                 log_normalizer=0.0),
        "wfr": lambda k: mfsde.wfr(fe, k, p0, t1=1.0, dt0=0.1, alpha=2.0, birth_death="clone", diagnostics=False),
    }


def _theta(particles):
    return getattr(particles, "theta", particles)


FAMILIES = ("langevin", "sgd", "mckean_vlasov", "schrodinger_bridge", "wfr")


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_of_keys_gives_replicates(small, family):
    fe, p0 = small
    run = _families(fe, p0)[family]
    keys = jax.random.split(jax.random.key(5), 2)
    batch = run(keys)
    assert _theta(batch.particles).shape == (2, 8, fe.dim)
    for r in range(2):
        single = run(keys[r])
        np.testing.assert_allclose(_theta(batch.particles)[r], _theta(single.particles), rtol=1e-10, atol=1e-12)
        for name, values in single.observables.items():
            np.testing.assert_allclose(batch.observables[name][r], values, rtol=1e-10, atol=1e-12, err_msg=name)
    assert not np.allclose(_theta(batch.particles)[0], _theta(batch.particles)[1])
    raw = run(jax.random.key_data(keys))
    np.testing.assert_array_equal(_theta(raw.particles), _theta(batch.particles))
    # (a single raw key equals its typed twin: tests/test_api.py, for every public function)
    idata = mfsde.to_inference_data(batch, fe)
    assert idata["posterior"].sizes["chain"] == 2 and idata["observables"].sizes["chain"] == 2


def test_bad_keys_are_named(small):
    fe, p0 = small
    for family, run in _families(fe, p0).items():
        with pytest.raises(TypeError, match="key must be"):
            run(3)
        with pytest.raises(ValueError, match=r"key must be one key .* got dtype uint32 and shape \(3, 3\)"):
            run(jnp.zeros((3, 3), jnp.uint32))
        with pytest.raises(ValueError, match="key must be"):
            run(jax.random.split(jax.random.key(0), (2, 2)))
