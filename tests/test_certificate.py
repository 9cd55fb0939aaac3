"""The entropy sandwich as an optimality certificate, against the linear closed form (x64).

Linear units, prior N(0, I), ρ = N(m', I): G[ρ] = N(−β(Σ̂m' − ĉ), I), and with δ = m' − m*,
A = I + βΣ̂ (m* = βA⁻¹ĉ):
    m' − mean(G[ρ]) = Aδ,   β⁻¹KL(ρ‖G[ρ]) = ‖Aδ‖²/(2β),
    F(ρ) − F(ρ*) = δᵀAδ/(2β),   β⁻¹KL(ρ‖ρ*) = ‖δ‖²/(2β),
so the sandwich holds because I ≼ A, and log Z[ρ] = ½β²‖Σ̂m' − ĉ‖².
"""

import math

import jax
import numpy as np
import pytest

import mfsde

BETA = 4.0
Z45 = 4.5


@pytest.fixture(scope="module")
def case(linear):
    x, y = linear.make_data(jax.random.key(0), 200, 3)
    fe = mfsde.FreeEnergy(linear.unit, x, y, BETA)
    sigma, c = (np.asarray(a) for a in linear.moments(x, y))
    return fe, sigma, c, np.asarray(linear.fixed_point_mean(x, y, BETA))


def test_certificate_linear_closed_form(case):
    """Tolerances: 4.5 of the certificate's own s.e. plus 0.04 nats (over β for the bound):
    the k-NN entropy's bias for a 3-dimensional Gaussian at N = 4000 (below 0.02 nats;
    entropy_knn's tests) and SMC's downward bias of log Z at 1000 particles (up to 0.03
    measured on this problem over 3 seeds)."""
    fe, sigma, c, m_star = case
    delta = np.array([0.3, -0.2, 0.1])
    m = m_star + delta
    n = 4000
    cloud = m + jax.random.normal(jax.random.key(1), (n, 3))
    cert = mfsde.optimality_certificate(fe, jax.random.key(2), cloud, num_smc_particles=1000)
    a = np.eye(3) + BETA * sigma
    upper = (a @ delta) @ (a @ delta) / (2 * BETA)
    gap = delta @ a @ delta / (2 * BETA)
    lower = delta @ delta / (2 * BETA)
    assert lower <= gap <= upper
    # the sample's own mean: the closed forms at the empirical m̂ (the cloud is N(m', I) drawn)
    m_hat = np.asarray(cloud.mean(0))
    g = sigma @ m_hat - c
    assert cert.log_normalizer == pytest.approx(0.5 * BETA**2 * g @ g, abs=Z45 * cert.log_normalizer_se + 0.04)
    d_hat = a @ (m_hat - m_star)
    assert cert.upper_bound == pytest.approx(d_hat @ d_hat / (2 * BETA), abs=Z45 * cert.se + 0.04 / BETA)
    assert cert.upper_bound >= gap - Z45 * cert.se - 0.04 / BETA
    assert 0 < cert.se < 0.1 * cert.upper_bound
    risk = float(np.mean((np.asarray(fe.x) @ m_hat - np.asarray(fe.y)) ** 2))  # f_ρ = x·m̂
    assert cert.free_energy == pytest.approx(0.5 * risk + cert.kl_to_prior / BETA, rel=1e-9)


def test_certificate_bad_input(case):
    fe, *_ = case
    cloud = fe.prior_sample(jax.random.key(0), 10)
    with pytest.raises(ValueError, match="particles"):
        mfsde.optimality_certificate(fe, jax.random.key(0), cloud[:2])
    with pytest.raises(ValueError, match="num_smc_particles"):
        mfsde.optimality_certificate(fe, jax.random.key(0), cloud, num_smc_particles=1)
    with pytest.raises(ValueError, match="equally weighted"):
        mfsde.optimality_certificate(fe, jax.random.key(0), mfsde.Particles(cloud, jax.numpy.arange(10.0)))
    with pytest.raises(ValueError, match="num_smc_runs"):
        mfsde.optimality_certificate(fe, jax.random.key(0), cloud, num_smc_runs=1)
    with pytest.raises(ValueError, match="finite beta"):
        mfsde.optimality_certificate(mfsde.FreeEnergy(fe.unit, fe.x, fe.y, math.inf), jax.random.key(0), cloud)


def test_certificate_in_check_and_summary(case):
    """At ρ* itself (N(m*, I) drawn) the bound is 0 up to its errors; check_fixed_point's own
    tests are those of a check without it (the certificate draws from its own key); summary
    certifies a run's final particles."""
    fe, sigma, c, m_star = case
    cloud = m_star + jax.random.normal(jax.random.key(3), (2000, 3))
    kw = dict(num_chains=2, num_warmup=100, num_samples=100, diagnose=False)
    plain = mfsde.check_fixed_point(fe, jax.random.key(4), cloud, **kw)
    check = mfsde.check_fixed_point(fe, jax.random.key(4), cloud, certificate=True, **kw)
    assert plain.certificate is None and check.test.statistic == plain.test.statistic
    cert = check.certificate
    # closed form at the sample mean: ‖A(m̂ − m*)‖²/(2β), about tr(A²)/(2βN) = 0.005 here
    a = np.eye(3) + BETA * sigma
    d_hat = a @ (np.asarray(cloud.mean(0)) - m_star)
    assert cert.upper_bound == pytest.approx(d_hat @ d_hat / (2 * BETA), abs=Z45 * cert.se + 0.04 / BETA)
    assert check.reason.endswith("of its minimum F(ρ*) (entropy sandwich: β⁻¹KL(ρ‖G[ρ])).")
    traj = mfsde.langevin(fe, jax.random.key(5), cloud[:200], t1=1.0, dt0=0.1, progress=False)
    s = mfsde.summary(mfsde.to_inference_data(traj, fe), fe, key=jax.random.key(6))
    assert s.certificate is not None and np.isfinite(s.certificate.upper_bound) and "of its minimum" in str(s)
    assert mfsde.summary(mfsde.to_inference_data(traj, fe), fe).certificate is None
