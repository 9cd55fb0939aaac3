"""The finite-N self-consistency statistic, the Stein residual and check_fixed_point's causes (float64)."""

import math

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mfsde
from mfsde.particle_posterior import stein_residual

# long statistical tests: make test runs them in the second lane (tests/conftest.py)
pytestmark = pytest.mark.lane2

S, BETA = 1.0, 20.0


@pytest.fixture(scope="module")
def lin(linear):
    x, y = linear.make_data(jax.random.key(0), num_data=80, dim=3, noise=0.3)
    fe = mfsde.FreeEnergy(linear.make_unit(S), x, y, beta=BETA)
    sigma, c = linear.moments(x, y)
    return fe, sigma, c, linear.fixed_point_mean(x, y, BETA, S)


def _exact_posterior_draw(key, n, sigma, m_star):
    """One exact draw of p_N for the linear unit: θ̄ ~ N(m*, (1/N)(I/s² + βΣ̂)⁻¹) plus
    deviations that are prior draws with their mean removed."""
    k1, k2 = jax.random.split(key)
    cov = np.linalg.inv(np.eye(3) / S**2 + BETA * sigma) / n
    bar = m_star + np.linalg.cholesky(cov) @ np.asarray(jax.random.normal(k1, (3,)))
    dev = S * np.asarray(jax.random.normal(k2, (n, 3)))
    return jnp.asarray(bar + dev - dev.mean(0))


def _exact_gibbs_draws(key, particles, sigma, c, s):
    """S exact draws of G[f_N] = N(−βs²(Σ̂ θ̄ − ĉ), s²I), as one chain (1, S, 3)."""
    mean = -BETA * S**2 * (sigma @ np.asarray(particles).mean(0) - c)
    return mean + S * jax.random.normal(key, (1, s, 3))


def test_self_consistency_calibrated_and_powerful(lin):
    """Linear unit, βs²λ(Σ̂) = 16..26 (the Gibbs map amplifies output fluctuations ~20x):
    exact p_N draws (N = 200) with exact draws of G[f_N] fail the 1% test in at most 3 of 60
    repetitions (binomial(60, 0.01) exceeds 3 with probability 0.3%); particles whose law
    is off by 3 prior sd / √N along one coordinate — invisible in the risk — fail in all 10.
    The old threshold sd/√N would have failed most exact draws: the amplified term matters."""
    fe, sigma, c, m_star = lin
    n, failures, old_failures = 200, 0, 0
    for r in range(60):
        k = jax.random.key(100 + r)
        p = _exact_posterior_draw(k, n, sigma, m_star)
        res = mfsde.self_consistency(fe, p, _exact_gibbs_draws(jax.random.fold_in(k, 1), p, sigma, c, 2000))
        failures += res.p_value < 0.01
        old_failures += res.output_error > 3 * math.sqrt(float(np.trace(sigma)) * S**2 / n)
    assert failures <= 3, failures
    assert old_failures > 30, old_failures
    for r in range(10):
        k = jax.random.key(200 + r)
        p = _exact_posterior_draw(k, n, sigma, m_star)
        p = p.at[:, 1].add(3.0 * S / math.sqrt(n) * jnp.sign(jax.random.normal(k, ())))
        res = mfsde.self_consistency(fe, p, _exact_gibbs_draws(jax.random.fold_in(k, 1), p, sigma, c, 2000))
        assert res.p_value < 0.01, res


def test_stein_residual_zero_under_exact_law_positive_for_euler(lin):
    """E_{p_N}[r] = 0 exactly: over 300 exact linear draws (N = 50) the mean is within 4.5
    s.e. of 0. Euler at h = 0.6 heats the collective modes (curvature λ(Σ̂) + 1/(βs²) =
    0.87 … 1.36 here) by 1/(1 − hλ/2) = 1.35 … 1.69: the time-averaged residual over 16
    replicates is > 4.5 s.e. above 0 (``stein_test``, measured z ≈ 7, temperature 1.26);
    LM, exact for this Gaussian law, is within 4.5 s.e. of 0."""
    fe, sigma, c, m_star = lin
    stein = jax.jit(lambda th, k: stein_residual(fe, th, k)[0])
    vals = np.array([float(stein(_exact_posterior_draw(jax.random.key(300 + i), 50, sigma, m_star),
                                 jax.random.key(900 + i))) for i in range(300)])
    assert abs(vals.mean()) < 4.5 * vals.std() / math.sqrt(len(vals))
    start = _exact_posterior_draw(jax.random.key(7), 50, sigma, m_star)
    keys = jax.random.split(jax.random.key(8), 16)
    z = {}
    for name, solver in (("euler", diffrax.Euler()), ("lm", mfsde.LeimkuhlerMatthews())):
        traj = mfsde.langevin(fe, keys, start, t1=300.0, dt0=0.6, solver=solver, ts=np.linspace(0, 300, 301),
                              progress=False, diagnostics=True)
        test = mfsde.stein_test(traj)
        z[name] = test.z
    assert z["euler"] > 4.5 and abs(z["lm"]) < 4.5, z


@pytest.fixture(scope="module")
def small_neuron(neuron):
    x, y = neuron.make_data(jax.random.key(0), num_data=256, dim=4)
    fe = mfsde.FreeEnergy(neuron.make_unit(1.0, 1.0), x, y, beta=50.0)
    keys = jax.random.split(jax.random.key(2), 4)
    p0 = mfsde.overdispersed_starts(fe, jax.random.key(1), 4, 256)
    # LM at dt0 = 0.4 (dt0·λ_max ≈ 0.5): its invariant-law error is below the check's resolution
    return fe, keys, p0, mfsde.langevin(fe, keys, p0, t1=1200.0, dt0=0.4, progress=False)


def test_check_passes_stationary_run_and_names_causes(small_neuron):
    """Planted neuron (d = 4, P = 256, N = 256, β = 50), 4 runs from overdispersed starts:
    - to t = 1200 with LM at dt0 = 0.4: converged, and check_fixed_point passes;
    - stopped at t = 20: FAIL, cause "not stationary", the slow site named;
    - the bare particles of a run stopped at t = 2 (no trajectory): FAIL, "unexplained"
      (snapshot z ≫ 3.5; at t = 20 the snapshot alone passes: conditional means settle
      long before the slow marginals, which only the trajectory shows);
    - continued with Euler at dt0 = 1.0 to t = 1200 (dt0 λ_max ≈ 1.1): FAIL, "time-step
      bias" — the Stein temperature is > 3% hot (power 20/20 at this step in
      bench/validation.py), and after continuing at dt0/2 it is cooler."""
    fe, keys, p0, done = small_neuron
    check = mfsde.check_fixed_point(fe, jax.random.key(3), done)
    assert check.passed and check.cause in ("passes", "finite-N"), check.reason
    early = mfsde.langevin(fe, keys, p0, t1=20.0, dt0=0.2, progress=False)
    check = mfsde.check_fixed_point(fe, jax.random.key(3), early)
    assert not check.passed and check.cause == "not stationary" and "[a]" in check.reason, check.reason
    # 100 steps: the default budget affords no in-run diagnostics, and the verdict says the
    # time-step test is missing
    assert early.run.diagnostics_every == 0 and "diagnostics=True" in check.reason, check.reason
    very_early = mfsde.langevin(fe, keys, p0, t1=2.0, dt0=0.2, progress=False, diagnostics=False)
    bare = mfsde.check_fixed_point(fe, jax.random.key(3), very_early.particles[0])
    assert not bare.passed and bare.cause == "unexplained" and bare.test.statistic > 5, bare.reason
    hot = mfsde.langevin(fe, keys, done.particles, t1=1200.0, dt0=1.0, solver=diffrax.Euler(), progress=False,
                         diagnostics=True)
    check = mfsde.check_fixed_point(fe, jax.random.key(3), hot)
    assert not check.passed and check.cause == "time-step bias", check.reason
    assert check.stein.temperature > 1.03 and check.half_step.temperature < check.stein.temperature


def test_check_bad_inputs(small_neuron):
    fe, _, _, done = small_neuron
    with pytest.raises(ValueError, match="level"):
        mfsde.check_fixed_point(fe, jax.random.key(0), done, level=1.5)
    with pytest.raises(ValueError, match="replicate"):
        mfsde.check_fixed_point(fe, jax.random.key(0), done, replicate=7)
    with pytest.raises(ValueError, match="non-finite"):
        mfsde.check_fixed_point(fe, jax.random.key(0), done.particles[0].at[0, 0].set(jnp.nan))
    with pytest.raises(ValueError, match=r"shape \(N, 5\)"):
        mfsde.check_fixed_point(fe, jax.random.key(0), done.particles[0][:, :3])


def test_kinked_unit_voids_the_temperature_test(relu_and_tanh_runs):
    """A ReLU unit's autodiff Hessian is zero where the true one has point masses, so Stein's
    identity fails whatever dt0 (here the temperature reads 51). curvature_defect must see
    it (|z| > 3.5 and share > 1%) on the ReLU run and not on the same run with tanh (|z|
    < 3.5: the O(h²) difference quotient error is ~1e-4 of the curvature), and
    check_fixed_point must drop the temperature test for the ReLU run and say why, instead
    of calling it "time-step bias"."""
    (fe_relu, relu), (fe_tanh, tanh) = relu_and_tanh_runs
    kinked = mfsde.curvature_defect(fe_relu, relu.particles, jax.random.key(5))
    smooth = mfsde.curvature_defect(fe_tanh, tanh.particles, jax.random.key(5))
    assert kinked.kinked(3.5) and abs(kinked.share) > 0.1, kinked
    assert not smooth.kinked(3.5) and abs(smooth.z) < 3.5, smooth
    assert abs(mfsde.stein_test(relu).temperature - 1.0) > 0.5
    check = mfsde.check_fixed_point(fe_relu, jax.random.key(6), relu, num_warmup=100, num_samples=200)
    assert check.stein is None and check.curvature is not None and check.cause != "time-step bias", check.reason
    assert "not twice differentiable" in check.reason, check.reason


@pytest.fixture(scope="module")
def relu_and_tanh_runs():
    """d = 4, P = 256, N = 100, β = 20: 500 Euler–Maruyama steps with the Stein residual saved."""
    import numpyro
    import numpyro.distributions as dist

    x = jax.random.normal(jax.random.key(0), (256, 4)) * jnp.array([2.0, 1.0, 1.0, 0.5])
    y = jnp.sign(x[:, 0]) * jnp.abs(x[:, 1])

    def make(activation):
        def unit(x):
            w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([4]).to_event(1))
            return activation(x @ w)

        fe = mfsde.FreeEnergy(unit, x, y, beta=BETA)
        return fe, mfsde.langevin(fe, jax.random.key(1), fe.prior_sample(jax.random.key(2), 100), t1=5.0, dt0=0.01,
                                  diagnostics=True, progress=False)

    return make(lambda z: jnp.maximum(z, 0.0)), make(jnp.tanh)
