import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import mfsde
from mfsde import UnitModel

X = jnp.linspace(-1.0, 1.0, 10).reshape(5, 2)


def constrained_unit(x):
    s = numpyro.sample("s", dist.HalfNormal(2.0))
    b = numpyro.sample("b", dist.Normal(0.0, 1.0).expand([2, 3]).to_event(2))
    u = numpyro.sample("u", dist.Uniform(-1.0, 2.0))
    return s * jnp.tanh(x @ b).sum(-1) + u


def test_flatten_unflatten_round_trip():
    um = UnitModel(constrained_unit, X)
    assert um.dim == 1 + 6 + 1
    assert um.site_names == ("s", "b", "u")
    assert um.site_shapes == ((), (2, 3), ())
    theta = jax.random.normal(jax.random.key(0), (4, um.dim))
    vals = um.unflatten(theta)
    assert vals["s"].shape == (4,) and vals["b"].shape == (4, 2, 3) and vals["u"].shape == (4,)
    assert jnp.all(vals["s"] > 0) and jnp.all((vals["u"] > -1) & (vals["u"] < 2))
    back = jax.vmap(um.flatten)({k: v for k, v in vals.items()})
    np.testing.assert_allclose(back, theta, rtol=1e-10, atol=1e-10)


def test_prior_logdensity_includes_jacobian():
    um = UnitModel(constrained_unit, X)
    theta = jax.random.normal(jax.random.key(1), (um.dim,))
    v = um.constrain(theta)
    z = um._unravel(theta)
    # s = exp(z_s): log|ds/dz| = z_s; u = -1 + 3 sigmoid(z_u): log|du/dz| = log 3 + log σ(z) + log σ(-z)
    expected = (
        dist.HalfNormal(2.0).log_prob(v["s"]) + z["s"]
        + dist.Normal(0.0, 1.0).log_prob(v["b"]).sum()
        + dist.Uniform(-1.0, 2.0).log_prob(v["u"]) + jnp.log(3.0) + jax.nn.log_sigmoid(z["u"]) + jax.nn.log_sigmoid(-z["u"])
    )
    np.testing.assert_allclose(um.prior_logdensity(theta), expected, rtol=1e-12)


def test_prior_sample_moments():
    def unit(x):
        g = numpyro.sample("g", dist.Gamma(3.0, 2.0))
        w = numpyro.sample("w", dist.Normal(1.0, 0.5).expand([2]).to_event(1))
        return g * (x @ w)

    um = UnitModel(unit, X)
    n = 20000
    v = um.unflatten(um.prior_sample(jax.random.key(0), n))
    # 5 standard errors of the mean (sd/sqrt(n)) for each moment checked.
    se = lambda sd: 5 * sd / np.sqrt(n)
    assert abs(float(v["g"].mean()) - 1.5) < se(np.sqrt(0.75))
    np.testing.assert_array_less(np.abs(np.asarray(v["w"].mean(0)) - 1.0), se(0.5))
    # sample variance of a Normal: sd of s² is σ² sqrt(2/(n-1))
    np.testing.assert_array_less(np.abs(np.asarray(v["w"].var(0)) - 0.25), 5 * 0.25 * np.sqrt(2 / n))


def test_apply_matches_formula(neuron):
    um = UnitModel(neuron.unit, X)
    theta = jax.random.normal(jax.random.key(2), (um.dim,))
    v = um.constrain(theta)
    np.testing.assert_allclose(um.apply(theta, X), v["a"] * jnp.tanh(X @ v["w"]), rtol=1e-12)
    # Normal priors: the unconstrained coordinates are the values themselves.
    np.testing.assert_allclose(jnp.concatenate([v["a"][None], v["w"]]), theta)


def test_error_no_sample_sites():
    with pytest.raises(ValueError, match="no sample sites"):
        UnitModel(lambda x: x.sum(-1), X)


def test_error_observed_site():
    def unit(x):
        w = numpyro.sample("w", dist.Normal(0, 1).expand([2]).to_event(1))
        numpyro.sample("obs", dist.Normal(x @ w, 1.0), obs=jnp.zeros(x.shape[0]))
        return x @ w

    with pytest.raises(ValueError, match="observed site 'obs'"):
        UnitModel(unit, X)


def test_error_param_and_discrete_sites():
    def with_param(x):
        w = numpyro.param("w", jnp.ones(2))
        numpyro.sample("a", dist.Normal(0, 1))
        return x @ w

    def with_discrete(x):
        k = numpyro.sample("k", dist.Bernoulli(0.5))
        return k * x.sum(-1)

    with pytest.raises(ValueError, match="param site 'w'"):
        UnitModel(with_param, X)
    with pytest.raises(ValueError, match="site 'k' has a discrete support"):
        UnitModel(with_discrete, X)


@pytest.mark.parametrize("ret", [lambda x, w: x * w, lambda x, w: (x @ w).sum(), lambda x, w: None])
def test_error_output_shape(ret):
    def unit(x):
        w = numpyro.sample("w", dist.Normal(0, 1).expand([2]).to_event(1))
        return ret(x, w)

    with pytest.raises(ValueError, match=r"shape \(P,\) = \(5,\)"):
        UnitModel(unit, X)


def test_error_nonfinite_output():
    def unit(x):
        w = numpyro.sample("w", dist.Normal(0, 1).expand([2]).to_event(1))
        return jnp.log(x @ w)  # negative arguments at most prior draws

    with pytest.raises(ValueError, match="not finite at"):
        UnitModel(unit, X)


def test_error_shape_depends_on_data_size():
    def unit(x):
        w = numpyro.sample("w", dist.Normal(0, 1).expand([x.shape[0]]).to_event(1))
        return w * x[:, 0]

    with pytest.raises(ValueError, match="site 'w' has shape"):
        UnitModel(unit, X)


def test_error_output_mixes_rows():
    def unit(x):
        w = numpyro.sample("w", dist.Normal(0, 1).expand([2]).to_event(1))
        z = w @ x.T
        return z - z.mean()  # depends on the whole batch: cannot be chunked

    with pytest.raises(ValueError, match="row by row"):
        UnitModel(unit, X)


def test_load_model_missing(tmp_path):
    with pytest.raises(FileNotFoundError):
        mfsde.load_model(tmp_path / "nope.py")


def test_prior_sample_and_logdensity_jit_vmap(neuron):
    um = UnitModel(neuron.unit, X)
    keys = jax.random.split(jax.random.key(3), 3)
    batched = jax.jit(jax.vmap(lambda k: um.prior_sample(k, 4)))(keys)
    assert batched.shape == (3, 4, um.dim)
    np.testing.assert_allclose(batched[1], um.prior_sample(keys[1], 4))
    lp = jax.jit(jax.vmap(um.prior_logdensity))(batched[0])
    np.testing.assert_allclose(lp, [um.prior_logdensity(t) for t in batched[0]], rtol=1e-12)


def test_gaussian_prior_moments_read_off_the_sites():
    """Normal and MultivariateNormal sites give their own moments, block-diagonal in trace
    order (the flat coordinates of a Gaussian site are the site itself); any other site: None."""
    cov_b = np.array([[1.0, 0.3], [0.3, 2.0]])

    def gaussian(x):
        a = numpyro.sample("a", dist.Normal(1.5, 0.5))
        w = numpyro.sample("w", dist.Normal(jnp.array([0.0, -1.0, 2.0]), 3.0).to_event(1))
        b = numpyro.sample("b", dist.MultivariateNormal(jnp.array([0.5, 0.0]), covariance_matrix=cov_b))
        return a * jnp.tanh(x @ w) + b.sum()

    unit = UnitModel(gaussian, jnp.ones((4, 3)))
    mean, cov = unit.gaussian_prior_moments()
    np.testing.assert_array_equal(mean, [1.5, 0.0, -1.0, 2.0, 0.5, 0.0])
    expected = np.zeros((6, 6))
    expected[0, 0] = 0.25
    expected[1:4, 1:4] = 9.0 * np.eye(3)
    expected[4:, 4:] = cov_b
    np.testing.assert_allclose(cov, expected, rtol=1e-6)
    assert UnitModel(constrained_unit, X).gaussian_prior_moments() is None  # HalfNormal, Uniform sites
