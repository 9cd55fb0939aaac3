"""mean-field Langevin vs the linear-Gaussian closed form (docs/design.md §5), float64."""

import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mfsde

BETA, S = 4.0, 1.0


@pytest.fixture(scope="module")
def setup(linear):
    x, y = linear.make_data(jax.random.key(0), num_data=60, dim=3, noise=0.3)
    fe = mfsde.FreeEnergy(linear.make_unit(S), x, y, beta=BETA)
    return fe, x, y


def z_scores(est, mean, cov):
    return (np.asarray(est) - mean) / np.sqrt(np.diag(cov))


def test_particle_mean_follows_ou_mean(setup, linear):
    """The empirical mean solves dm_N = −A(m_N − m*)dt + sqrt(2/(βN)) dB̄ exactly, so
    m_N(t) − m(t) is Gaussian with the covariance of ``particle_mean_covariance``: each
    coordinate at each time is checked as a z-score, |z| < 4.5 (2-sided p = 7e-6 each,
    18 checks). Euler's bias at dt0 is computed from the exact discrete recursion and is
    asserted to be below 0.3 standard errors, so the comparison is with the continuous ODE
    (bias/sd ∝ dt·√N: N = 640 at dt0 = 5e-3 has the margin of N = 4000 at 2e-3)."""
    fe, x, y = setup
    n, dt = 640, 5e-3
    ts = np.array([0.0, 0.25, 0.5, 1.0, 2.0, 12.0])
    p0 = fe.prior_sample(jax.random.key(1), n) + 1.5  # start away from m*
    means = []
    traj = mfsde.langevin(fe, jax.random.key(2), p0, t1=12.0, dt0=dt, ts=ts, diagnostics=False,
                          observables={f"m{j}": (lambda p, j=j: p[:, j].mean()) for j in range(3)})
    est = np.stack([traj.observables[f"m{j}"] for j in range(3)], 1)
    m0 = np.asarray(p0.mean(0))
    a = linear.drift_matrix(x, y, BETA, S)
    m_star = linear.fixed_point_mean(x, y, BETA, S)
    for k, t in enumerate(ts):
        exact = linear.mean_ode(t, m0, x, y, BETA, S)
        cov = linear.particle_mean_covariance(t, n, 0.0, x, y, BETA, S)  # m_N(0) is given
        if t > 0:
            # exact Euler mean recursion m_{k+1} = m_k − dt A (m_k − m*)
            steps = round(t / dt)
            md = m_star + np.linalg.matrix_power(np.eye(3) - dt * a, steps) @ (m0 - m_star)
            assert np.all(np.abs(md - exact) < 0.3 * np.sqrt(np.diag(cov)))
            z = z_scores(est[k], exact, cov)
            assert np.all(np.abs(z) < 4.5), (t, z)
        means.append(exact)
    # ends at the fixed point: m(12) is within 0.3 sd of m*, so the last z-test is one at m*
    assert np.all(np.abs(means[-1] - m_star) < 0.3 * np.sqrt(np.diag(cov)))
    assert np.all(np.abs(z_scores(traj.particles.mean(0), m_star, cov)) < 4.5)


def test_variance_goes_to_prior_variance(setup):
    """Each coordinate's variance goes to s² (ρ* = N(m*, s²I)): from a point mass, Euler's
    recursion (ΔΨ is the same at every particle, so each centred coordinate is an OU chain
    of rate a = 1/(βs²)) gives exactly s²(1 − (1 − a dt)^{2k}) / (1 − dt·a/2) after k
    steps; the sample variance of N particles has sd s² sqrt(2/N) per coordinate (the
    (1 − 1/N) coupling factor is negligible): |z| < 4.5."""
    fe, x, y = setup
    n, dt = 4000, 2e-2
    p0 = jnp.zeros((n, 3))  # start from a point mass: variance has to build up
    traj = mfsde.langevin(fe, jax.random.key(3), p0, t1=10.0, dt0=dt, ts=[10.0], solver=diffrax.Euler(),
                          diagnostics=False)
    var = np.asarray(traj.particles.var(0))
    a = 1 / (BETA * S**2)
    expected = S**2 / (1 - dt * a / 2) * (1 - (1 - a * dt) ** (2 * round(10.0 / dt)))
    z = (var - expected) / (S**2 * math.sqrt(2 / n))
    assert np.all(np.abs(z) < 4.5), z


def test_weak_order_one(setup, linear):
    """Weak order of Euler–Maruyama at a finite time: error of E[(1/N)Σ‖θ_i‖²] at T = 3 against
    the closed form, for dt0 = 0.2 … 0.025 with a stiff prior (a = 1/(βs²) = 2). Euler's
    variance bias is ≈ s² dt a/2: 0.25 … 0.026 per coordinate, each > 5 Monte Carlo
    standard errors (sd of the statistic ≈ s² sqrt(2/(N D)) = 0.0045 at N = 5·10⁴); the
    log-log slope of error vs dt0 must be in [0.8, 1.3] (order 1; noise moves it by ~0.1)."""
    fe, x, y = setup
    beta = 0.5
    fe = mfsde.FreeEnergy(fe.unit, x, y, beta=beta)
    n, t1, d = 50_000, 3.0, 3
    a = 1 / (beta * S**2)
    m = linear.mean_ode(t1, np.zeros(d), x, y, beta, S)
    cov_mean = linear.particle_mean_covariance(t1, n, 0.0, x, y, beta, S)
    # E(1/N)Σ‖θ_i‖² = ‖m‖² + tr Cov(m_N) + (1 − 1/N) D s² (1 − e^{−2aT})
    exact = m @ m + np.trace(cov_mean) + (1 - 1 / n) * d * S**2 * (1 - math.exp(-2 * a * t1))
    dts = np.array([0.2, 0.1, 0.05, 0.025])
    errs = []
    for i, dt in enumerate(dts):
        traj = mfsde.langevin(fe, jax.random.key(10 + i), jnp.zeros((n, d)), t1=t1, dt0=float(dt), ts=[t1],
                              solver=diffrax.Euler(), diagnostics=False)
        errs.append(abs(float(traj.observables["mean_sq_norm"][-1]) - exact))
    errs = np.array(errs)
    se = S**2 * math.sqrt(2 * d / n)
    assert np.all(errs > 5 * se), errs
    slope = np.polyfit(np.log(dts), np.log(errs), 1)[0]
    assert 0.8 < slope < 1.3, (slope, errs)


def test_gradient_flow_risk_never_increases(neuron):
    x, y = neuron.make_data(jax.random.key(4), num_data=64, dim=4)
    fe = mfsde.FreeEnergy(neuron.unit, x, y, beta=math.inf)
    p0 = fe.prior_sample(jax.random.key(5), 50)
    ts = jnp.linspace(0, 5.0, 201)
    euler = mfsde.langevin(fe, jax.random.key(6), p0, t1=5.0, dt0=0.01, ts=ts)
    pid = mfsde.langevin(fe, jax.random.key(6), p0, t1=5.0, dt0=0.01, ts=ts, solver=diffrax.Tsit5(),
                         stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-8))
    for traj in (euler, pid):
        r = np.asarray(traj.observables["risk"])
        assert r[-1] < 0.5 * r[0]
        assert np.all(np.diff(r) <= 1e-12 * r[0]), np.diff(r).max()
    # the adaptive ODE solve is accurate: Euler at dt = 0.01 agrees to O(dt)
    np.testing.assert_allclose(euler.observables["risk"], pid.observables["risk"], rtol=0.05)
    assert int(pid.num_steps) < int(euler.num_steps)


def test_gradient_flow_linear_exact(setup, linear):
    """β = ∞: the mean solves dm/dt = −(Σ̂m − ĉ) exactly (no noise); Tsit5 + PID to 1e-6."""
    fe, x, y = setup
    fe = mfsde.FreeEnergy(fe.unit, x, y, beta=math.inf)
    p0 = fe.prior_sample(jax.random.key(7), 20)
    traj = mfsde.langevin(fe, None, p0, t1=3.0, dt0=0.1, solver=diffrax.Tsit5(),
                          stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-10))
    sigma, c = linear.moments(x, y)
    lam, q = np.linalg.eigh(sigma)
    m_inf = np.linalg.solve(sigma, c)
    m0 = np.asarray(p0.mean(0))
    m3 = m_inf + (q * np.exp(-3.0 * lam)) @ q.T @ (m0 - m_inf)
    np.testing.assert_allclose(traj.particles.mean(0), m3, rtol=1e-6, atol=1e-8)
    # and each particle moves by the same vector (Ψ is linear in θ)
    np.testing.assert_allclose(traj.particles - p0, np.broadcast_to(m3 - m0, p0.shape), rtol=1e-6, atol=1e-8)


def test_schedule_is_a_time_change(setup, linear):
    """ξ(t) = 1/(1+t) multiplies drift and diffusion variance: the law at t is the law of the
    unscheduled dynamics at τ(t) = log(1 + t). z-scores of the particle mean as above."""
    fe, x, y = setup
    n = 4000
    p0 = fe.prior_sample(jax.random.key(8), n) - 1.0
    ts = np.array([1.0, 4.0])
    traj = mfsde.langevin(fe, jax.random.key(9), p0, t1=4.0, dt0=2e-3, ts=ts, schedule=lambda t: 1.0 / (1.0 + t),
                          diagnostics=False, observables={"m0": lambda p: p[:, 0].mean()})
    m0 = np.asarray(p0.mean(0))
    for k, t in enumerate(ts):
        tau = math.log1p(t)
        exact = linear.mean_ode(tau, m0, x, y, BETA, S)[0]
        sd = math.sqrt(linear.particle_mean_covariance(tau, n, 0.0, x, y, BETA, S)[0, 0])
        assert abs(float(traj.observables["m0"][k]) - exact) < 4.5 * sd
    # the unscheduled run is visibly different at t = 4 (τ = 1.6 vs 4)
    exact_plain = linear.mean_ode(4.0, m0, x, y, BETA, S)[0]
    assert abs(exact_plain - linear.mean_ode(math.log(5.0), m0, x, y, BETA, S)[0]) > 10 * sd


def test_observables_and_chunking(neuron):
    x, y = neuron.make_data(jax.random.key(10), num_data=50, dim=4)
    fe = mfsde.FreeEnergy(neuron.unit, x, y, beta=50.0)
    fc = mfsde.FreeEnergy(neuron.unit, x, y, beta=50.0, chunk_size=16)
    p0 = fe.prior_sample(jax.random.key(11), 30)
    a = mfsde.langevin(fe, jax.random.key(12), p0, t1=1.0, dt0=0.05)
    b = mfsde.langevin(fc, jax.random.key(12), p0, t1=1.0, dt0=0.05)
    np.testing.assert_allclose(a.particles, b.particles, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(a.observables["risk"], b.observables["risk"], rtol=1e-10)
    assert a.ts.shape == (21,) and int(a.num_steps) == 20
    np.testing.assert_allclose(a.observables["risk"][-1], fe.risk(a.particles), rtol=1e-12)
    np.testing.assert_allclose(a.observables["risk"][0], fe.risk(p0), rtol=1e-12)
    np.testing.assert_allclose(a.observables["mean_sq_norm"][-1], jnp.mean(jnp.sum(a.particles**2, 1)), rtol=1e-12)


def test_jit_and_vmap_over_keys(neuron):
    x, y = neuron.make_data(jax.random.key(13), num_data=20, dim=3)
    fe = mfsde.FreeEnergy(neuron.unit, x, y, beta=20.0)
    p0 = fe.prior_sample(jax.random.key(14), 16)

    def run(key):
        return mfsde.langevin(fe, key, p0, t1=0.5, dt0=0.05, diagnostics=False).particles

    keys = jax.random.split(jax.random.key(15), 3)
    eager = [run(k) for k in keys]
    np.testing.assert_allclose(jax.jit(run)(keys[0]), eager[0], rtol=1e-10, atol=1e-12)
    batched = jax.jit(jax.vmap(run))(keys)
    for k in range(3):
        np.testing.assert_allclose(batched[k], eager[k], rtol=1e-10, atol=1e-12)
    assert not np.allclose(eager[0], eager[1])


def test_progress_meter_shows(neuron, capfd):
    x, y = neuron.make_data(jax.random.key(16), num_data=10, dim=2)
    fe = mfsde.FreeEnergy(neuron.unit, x, y, beta=20.0)
    jax.block_until_ready(mfsde.langevin(fe, jax.random.key(0), fe.prior_sample(jax.random.key(1), 4), t1=1.0,
                                         dt0=0.01, progress=True, diagnostics=False).particles)
    assert "100/100" in capfd.readouterr().err  # the bar over the run's steps, at its end


def test_bad_inputs(neuron):
    x, y = neuron.make_data(jax.random.key(17), num_data=10, dim=2)
    fe = mfsde.FreeEnergy(neuron.unit, x, y, beta=20.0)
    p0 = fe.prior_sample(jax.random.key(1), 4)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"particles0 must have shape \(N, 3\)"):
        mfsde.langevin(fe, key, p0[:, :2], t1=1.0, dt0=0.1)
    with pytest.raises(ValueError, match="non-finite"):
        mfsde.langevin(fe, key, p0.at[0, 0].set(jnp.nan), t1=1.0, dt0=0.1)
    with pytest.raises(ValueError, match="t0 < t1"):
        mfsde.langevin(fe, key, p0, t1=0.0, dt0=0.1)
    with pytest.raises(ValueError, match="dt0"):
        mfsde.langevin(fe, key, p0, t1=1.0, dt0=-0.1)
    with pytest.raises(TypeError, match="FreeEnergy"):
        mfsde.langevin(neuron.unit, key, p0, t1=1.0, dt0=0.1)


def test_saves_are_states_of_the_chain():
    """Off-grid save times move to the nearest step, so observables see the chain itself.

    Euler on dθ = −θ dt + √2 dB with h = 0.5 has stationary variance 1/(1 − h/2) = 4/3. A
    state interpolated halfway through a step, ½((2 − h)θ_n + √(2h) ξ), has variance
    ¼((2 − h)²·4/3 + 2h) = 1: the bias diffrax's interpolant gave saves off the step grid.
    20000 independent particles from stationarity: the mean of θ² has s.e. (4/3)·√(2/20000)
    = 0.013, so |mean − 4/3| < 0.06 (4.5 s.e.) while the interpolant's 1 is 25 s.e. away.
    """
    from mfsde.dynamics._core import ParticleSDE, solve

    class Drift(eqx.Module):
        def __call__(self, t, y, args):
            return -y

    class Noise(eqx.Module):
        def __call__(self, t):
            return math.sqrt(2.0)

    h, var = 0.5, 4.0 / 3.0
    y0 = math.sqrt(var) * jax.random.normal(jax.random.key(0), (20000, 1), jnp.float64)
    obs = lambda t, y, args: {"mean_sq": jnp.mean(y**2)}  # noqa: E731
    # 3.2 and 7.1 are not on the step grid t0 + k·0.5 (3.25 would be halfway): they move to 3.0 and 7.0
    traj = solve(ParticleSDE(Drift(), Noise()), jax.random.key(1), y0, t0=0.0, t1=8.0, dt0=h,
                 solver=diffrax.Euler(), observables=obs, ts=np.array([3.2, 7.1]))
    np.testing.assert_allclose(traj.ts, [3.0, 7.0])
    np.testing.assert_allclose(traj.observables["mean_sq"], var, atol=0.06)
    # halfway saves are still the states at a step, whichever side
    half = solve(ParticleSDE(Drift(), Noise()), jax.random.key(1), y0, t0=0.0, t1=8.0, dt0=h,
                 solver=diffrax.Euler(), observables=obs, ts=np.array([3.25, 7.25]))
    assert float(jnp.min(half.observables["mean_sq"])) > var - 0.06
    with pytest.raises(ValueError, match="within one step"):
        solve(ParticleSDE(Drift(), Noise()), jax.random.key(1), y0, t0=0.0, t1=8.0, dt0=h,
              solver=diffrax.Euler(), observables=obs, ts=np.array([3.1, 3.2]))


@pytest.mark.parametrize("steps,saves,n,p", [(20, 21, 4096, 4096), (100, 101, 128, 256), (1000, 101, 128, 256), (400, 101, 64, 64),
                                             (5000, 101, 16384, 1024), (6000, 101, 512, 512), (10**5, 101, 10**5, 1024),
                                             (300, 7, 64, 64)])
def test_diagnostics_budget_policy_chooses_what_it_says(steps, saves, n, p):
    """The default in-run diagnostics (``_diagnostic_saves``): every k-th save counted
    back from the last, the densest such grid whose cost model, (c + N/P) drift
    evaluations a save, stays within 10% of the run's S drift evaluations."""
    from mfsde.dynamics._diagnostic_saves import _SAVE_DRIFTS, diagnostic_save_indices, diagnostics_every

    per_save = _SAVE_DRIFTS + n / p
    k = diagnostics_every(steps, saves, n, p)
    idx = diagnostic_save_indices(saves, k)
    assert idx.size * per_save <= 0.1 * steps
    if k == 0:
        assert idx.size == 0 and per_save > 0.1 * steps  # not even one save is affordable
        return
    assert idx[-1] == saves - 1 and np.all(np.diff(idx) == k) and idx[0] < k
    if k > 1:  # the next denser grid would break the budget
        assert diagnostic_save_indices(saves, k - 1).size * per_save > 0.1 * steps


def test_default_run_saves_diagnostics_on_the_budgeted_saves(neuron):
    """A default run has its diagnostics exactly on the policy's saves (NaN elsewhere), says
    so in its info, and the verdicts read those saves only; ``diagnostics=True`` has them at
    every save, and a run too short for one has none."""
    from mfsde.dynamics._diagnostic_saves import diagnostic_save_indices, diagnostics_every

    x, y = neuron.make_data(jax.random.key(5), num_data=64, dim=2)
    fe = mfsde.FreeEnergy(neuron.unit, x, y, beta=50.0)
    p0 = fe.prior_sample(jax.random.key(6), 64)
    traj = mfsde.langevin(fe, jax.random.key(7), p0, t1=80.0, dt0=0.02)
    k = diagnostics_every(4000, 101, 64, 64)
    assert traj.run.diagnostics_every == k and 1 < k < 101
    finite = np.flatnonzero(np.isfinite(np.asarray(traj.observables["kl_to_prior"])))
    np.testing.assert_array_equal(finite, diagnostic_save_indices(101, k))
    assert np.all(np.isfinite(np.asarray(traj.observables["stein_residual"]))[finite])
    assert np.all(np.isfinite(np.asarray(traj.observables["risk"])))
    st = mfsde.stein_test(traj)
    assert st is not None and math.isfinite(st.z)
    verdict = mfsde.convergence(mfsde.to_inference_data(traj, fe))
    assert "cannot judge" not in verdict.reason
    assert {"kl_to_prior", "free_energy"} <= {v.name for v in verdict.observables}
    every = mfsde.langevin(fe, jax.random.key(7), p0, t1=1.0, dt0=0.02, diagnostics=True)
    assert every.run.diagnostics_every == 1 and np.all(np.isfinite(np.asarray(every.observables["kl_to_prior"])))
    short = mfsde.langevin(fe, jax.random.key(7), p0, t1=1.0, dt0=0.02)
    assert short.run.diagnostics_every == 0 and "kl_to_prior" not in short.observables
    with pytest.raises(TypeError, match="diagnostics must be True, False or None"):
        mfsde.langevin(fe, jax.random.key(7), p0, t1=1.0, dt0=0.02, diagnostics="all")
