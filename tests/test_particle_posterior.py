"""The exact N-particle stationary law p_N: closed form, numpyro cross-check, Langevin (float64)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from arviz_stats import ess

import mfsde

S, BETA, N = 1.0, 4.0, 8


@pytest.fixture(scope="module")
def lin(linear):
    x, y = linear.make_data(jax.random.key(0), num_data=60, dim=3, noise=0.3)
    return mfsde.FreeEnergy(linear.make_unit(S), x, y, beta=BETA), x, y


@pytest.fixture(scope="module")
def lin_posterior(lin):
    fe, _, _ = lin
    return mfsde.sample_particle_posterior(fe, jax.random.key(1), N, num_chains=4, num_warmup=400, num_samples=1000)


def _mean_se(draws):
    """(mean, s.e.) of a (chains, draws) series, s.e. = sd / sqrt(ArviZ ESS)."""
    d = np.asarray(draws, np.float64)
    return d.mean(), d.std() / math.sqrt(float(ess(d, method="mean")))


def test_linear_closed_form(lin, linear, lin_posterior):
    """θ̄ ~ N(m*, (1/N)(I/s² + βΣ̂)⁻¹) and the deviations θ_i − θ̄ are the prior N(0, s²I)
    conditioned on summing to zero: E(θ_ij − θ̄_j)² = s²(1 − 1/N), and deviations of two
    different particles have covariance −s²/N. z-scores with ESS-based standard errors,
    |z| < 4.5 (2-sided p = 7e-6 each); the covariance of θ̄ entry-wise within 4.5 s.e.
    of a sample covariance, sqrt((Σ_ii Σ_jj + Σ_ij²)/ESS)."""
    fe, x, y = lin
    th = np.asarray(lin_posterior.samples)                       # (4, 1000, N, 3)
    bar = th.mean(2)
    sigma, _ = linear.moments(x, y)
    m_star = linear.fixed_point_mean(x, y, BETA, S)
    cov = np.linalg.inv(np.eye(3) / S**2 + BETA * sigma) / N
    for j in range(3):
        mean, se = _mean_se(bar[..., j])
        assert abs(mean - m_star[j]) < 4.5 * se, (j, mean, m_star[j], se)
    n_eff = min(float(ess(bar[..., j], method="mean")) for j in range(3))
    emp = np.cov(bar.reshape(-1, 3).T)
    tol = 4.5 * np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n_eff)
    np.testing.assert_array_less(np.abs(emp - cov), tol)
    dev = th - bar[:, :, None]
    mean_sq, se = _mean_se((dev**2).mean(axis=(2, 3)))
    assert abs(mean_sq - S**2 * (1 - 1 / N)) < 4.5 * se
    cross, se = _mean_se((dev[:, :, 0] * dev[:, :, 1]).mean(-1))
    assert abs(cross + S**2 / N) < 4.5 * se
    assert lin_posterior.acceptance.shape == (4, 1000) and not bool(np.any(lin_posterior.diverging))


def test_numpyro_cross_check(lin, lin_posterior):
    """numpyro's NUTS on the same potential (−``particle_logdensity``, autodiff through our
    custom gradient) agrees with BlackJAX: the means of θ̄ and of the risk differ by less
    than 4.5 standard errors of the difference (ESS-based)."""
    from numpyro.infer import MCMC, NUTS

    fe, _, _ = lin
    logp = mfsde.particle_posterior.particle_logdensity(fe, N)
    mcmc = MCMC(NUTS(potential_fn=lambda z: -logp(z)), num_warmup=400, num_samples=2000, progress_bar=False)
    mcmc.run(jax.random.key(2), init_params=jnp.asarray(lin_posterior.samples[0, -1]).reshape(-1))
    ref = np.asarray(mcmc.get_samples()).reshape(1, -1, N, 3)
    ours = np.asarray(lin_posterior.samples)
    risk = jax.vmap(fe.risk)
    for stat in (lambda t: t.mean(2)[..., 0], lambda t: t.mean(2)[..., 2],
                 lambda t: np.asarray(risk(jnp.asarray(t.reshape(-1, N, 3)))).reshape(t.shape[:2])):
        (m1, s1), (m2, s2) = _mean_se(stat(ref)), _mean_se(stat(ours))
        assert abs(m1 - m2) < 4.5 * math.hypot(s1, s2), (m1, m2, s1, s2)


def test_langevin_matches_posterior_tanh(neuron):
    """A small tanh network (N = 8, D = 3, P = 24): time-and-replicate averages of R and of
    (1/N) Σ‖θ_i‖² over 32 stationary Langevin runs (Leimkuhler–Matthews, dt0 = 0.02, started
    from posterior draws) equal the posterior means. Standard errors: the Langevin one from
    the spread of the 32 independent replicates' time averages, the posterior one from
    ArviZ's ESS; |z| < 4.5. The integrator's bias at this dt0 is far below either (its
    Stein temperature is checked in test_validation)."""
    x, y = neuron.make_data(jax.random.key(3), num_data=24, dim=2, noise=0.1)
    fe = mfsde.FreeEnergy(neuron.make_unit(1.0, 1.0), x, y, beta=20.0)
    post = mfsde.sample_particle_posterior(fe, jax.random.key(4), N, num_chains=4, num_warmup=500, num_samples=1500)
    thetas = post.samples.reshape(-1, N, 3)
    ref_risk = np.asarray(jax.lax.map(fe.risk, thetas)).reshape(4, -1)
    ref_sq = np.asarray(jnp.mean(jnp.sum(thetas**2, -1), -1)).reshape(4, -1)
    starts = post.samples[:, -8:].reshape(-1, N, 3)              # 32 posterior draws
    keys = jax.random.split(jax.random.key(5), 32)
    traj = mfsde.langevin(fe, keys, starts, t1=300.0, dt0=0.02, ts=np.linspace(0, 300, 301), diagnostics=False)
    for name, ref in (("risk", ref_risk), ("mean_sq_norm", ref_sq)):
        runs = np.asarray(traj.observables[name]).mean(1)       # time average of each replicate
        m_l, se_l = runs.mean(), runs.std(ddof=1) / math.sqrt(len(runs))
        m_p, se_p = _mean_se(ref)
        assert abs(m_l - m_p) < 4.5 * math.hypot(se_l, se_p), (name, m_l, m_p, se_l, se_p)


def test_inference_data_and_bad_inputs(lin, lin_posterior, tmp_path):
    fe, x, y = lin
    idata = mfsde.to_inference_data(lin_posterior, fe)
    assert idata["posterior"]["theta"].shape == (4, 1000, N, 3)
    assert set(idata["sample_stats"].data_vars) >= {"diverging", "acceptance_rate", "step_size", "energy", "n_steps"}
    assert idata["observables"]["risk"].shape == (4, 1000)
    assert mfsde.load(mfsde.save(idata, tmp_path / "pp.nc")).identical(idata)
    with pytest.raises(ValueError, match="num_particles"):
        mfsde.sample_particle_posterior(fe, jax.random.key(0), 0)
    with pytest.raises(ValueError, match="kernel"):
        mfsde.sample_particle_posterior(fe, jax.random.key(0), 4, kernel="gibbs")
    with pytest.raises(ValueError, match="init must have shape"):
        mfsde.sample_particle_posterior(fe, jax.random.key(0), 4, init=jnp.zeros((2, 5, 3)))
    with pytest.raises(ValueError, match="finite beta"):
        mfsde.sample_particle_posterior(mfsde.FreeEnergy(fe.unit, x, y, beta=math.inf), jax.random.key(0), 4)
