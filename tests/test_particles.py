"""Weighted particle measures (mfsde.Particles) in FreeEnergy, the diagnostics and ArviZ.

Two exact identities and one closed form:
- a measure with integer weights m_i is the cloud with θ_i repeated m_i times, so f_ρ, R, Ψ,
  ∇Ψ, the Gibbs log-density and exact W2 agree with the repeated cloud to float64 rounding;
- uniform log-weights are the plain array (same numbers);
- the weighted k-NN KL of points drawn from q = N(0, I) and weighted to ρ = N(μ, I) matches
  KL(N(μ, I)‖N(0, s²I)) within 4 of its own standard errors plus the k-NN bias bound.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mfsde
from mfsde import Particles

S = 1.5


@pytest.fixture(scope="module")
def lin(linear):
    x, y = linear.make_data(jax.random.key(0), num_data=40, dim=2, noise=0.3)
    return mfsde.FreeEnergy(linear.make_unit(S), x, y, beta=4.0)


def _weighted_and_repeated(fe):
    theta = fe.prior_sample(jax.random.key(1), 5)
    counts = np.array([1, 2, 3, 1, 4])
    return Particles(theta, jnp.log(jnp.asarray(counts, theta.dtype)) + 0.7), jnp.repeat(theta, counts, axis=0), counts


def test_integer_weights_are_repeated_particles(lin):
    fe = lin
    weighted, repeated, counts = _weighted_and_repeated(fe)
    np.testing.assert_allclose(fe.output(weighted), fe.output(repeated), rtol=1e-12)
    np.testing.assert_allclose(fe.risk(weighted), fe.risk(repeated), rtol=1e-12)
    v = fe.prior_sample(jax.random.key(2), 3)
    np.testing.assert_allclose(fe.potential(v[0], weighted), fe.potential(v[0], repeated), rtol=1e-12)
    np.testing.assert_allclose(fe.gibbs_logdensity(weighted)(v[1]), fe.gibbs_logdensity(repeated)(v[1]), rtol=1e-12)
    # ∇Ψ at each particle: the weighted particle's row is any of its copies' rows
    g_w, g_r = fe.grad_potential(weighted), fe.grad_potential(repeated)
    np.testing.assert_allclose(g_w, g_r[np.cumsum(counts) - 1], rtol=1e-12)
    # and the weights matter: the unweighted cloud is another measure
    assert abs(float(fe.risk(weighted) - fe.risk(weighted.theta))) > 1e-3
    assert mfsde.w2(weighted, repeated) < 1e-6
    np.testing.assert_allclose(mfsde.w2(weighted, v), mfsde.w2(repeated, v), rtol=1e-9)
    assert float(weighted.effective_sample_size()) == pytest.approx(counts.sum() ** 2 / (counts**2).sum())


def test_uniform_weights_are_the_plain_array(lin):
    fe = lin
    theta = fe.prior_sample(jax.random.key(3), 200)
    uniform = Particles(theta, jnp.zeros(200))
    for fn in (fe.output, fe.risk, fe.grad_potential):
        np.testing.assert_allclose(fn(uniform), fn(theta), rtol=1e-12)
    np.testing.assert_allclose(mfsde.kl_to_prior(uniform, fe), mfsde.kl_to_prior(theta, fe), rtol=1e-10)
    np.testing.assert_allclose(mfsde.w2_to_prior_bound(uniform, fe), mfsde.w2_to_prior_bound(theta, fe), rtol=1e-10)
    np.testing.assert_allclose(mfsde.w2_to_prior(uniform, fe), mfsde.w2_to_prior(theta, fe), rtol=1e-10)


def test_weighted_knn_kl_matches_the_gaussian_closed_form(lin):
    fe = lin
    n, mu = 2000, np.array([1.0, -0.5])
    theta = jax.random.normal(jax.random.key(4), (n, 2))
    log_w = theta @ mu  # N(μ, I) / N(0, I) up to a constant
    cloud = Particles(theta, log_w)
    exact = 0.5 * (2 / S**2 + mu @ mu / S**2 - 2 + 2 * math.log(S**2))
    kl = float(mfsde.kl_to_prior(cloud, fe))
    # s.e. of a self-normalised weighted mean Σ w_i t_i: sqrt(Σ w_i² (t_i − mean)²), with
    # t_i the per-point terms; plus 0.03 nats for the k-NN bias (below 0.02 at D = 2, N = 2000
    # for the unweighted estimator, test_diagnostics)
    w = np.asarray(cloud.weights())
    from mfsde.diagnostics._divergence import knn_log_distances

    from jax.scipy.special import digamma

    log_q = digamma(1.0) - digamma(float(n)) - math.log(math.pi) - 2 * np.asarray(knn_log_distances(theta, 1))
    terms = np.log(n * w) + log_q - np.asarray(fe.prior_logdensity(theta))
    np.testing.assert_allclose(np.sum(w * terms), kl, rtol=1e-10)
    se = math.sqrt(np.sum(w**2 * (terms - kl) ** 2))
    tol = 4 * se + 0.03
    assert abs(kl - exact) < tol, (kl, exact, tol)
    # the weights move the estimate by more than the tolerance: the unweighted cloud is N(0, I)
    assert abs(float(mfsde.kl_to_prior(theta, fe)) - exact) > tol


def test_weighted_trajectory_through_arviz(lin, tmp_path):
    fe = lin
    weighted, _, _ = _weighted_and_repeated(fe)
    traj = mfsde.Trajectory(ts=jnp.array([0.0, 1.0]), particles=weighted,
                            observables={"risk": jnp.array([1.0, 0.5])}, num_steps=jnp.asarray(10))
    idata = mfsde.to_inference_data(traj, fe)
    assert "weights" in idata.children
    back = mfsde.load(mfsde.save(idata, tmp_path / "w.nc"))
    np.testing.assert_allclose(back["weights"]["log_weight"].values[0], np.asarray(weighted.log_weight))
    np.testing.assert_allclose(back["weights"]["weight"].values[0], np.asarray(weighted.weights()), rtol=1e-12)
    # summary's W2 reads the weights back: the weighted cloud's W2, not the unweighted one's
    s = mfsde.summary(back, fe)
    np.testing.assert_allclose(s.w2_to_prior, mfsde.w2_to_prior(weighted, fe), rtol=1e-9)
    assert abs(s.w2_to_prior - mfsde.w2_to_prior(weighted.theta, fe)) > 1e-3
