"""Leimkuhler–Matthews vs Euler–Maruyama: the recursion, and invariant-measure order (float64)."""

import math

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.linalg import solve_discrete_lyapunov

import mfsde
from mfsde.dynamics import LangevinDrift, LangevinNoise

S, BETA = 1.0, 0.5


@pytest.fixture(scope="module")
def lin(linear):
    x, y = linear.make_data(jax.random.key(0), num_data=60, dim=3, noise=0.3)
    return mfsde.FreeEnergy(linear.make_unit(S), x, y, beta=BETA), x, y


def test_recursion_matches_hand_written(neuron):
    """θ_{k+1} = θ_k + h b(θ_k) + g (ΔW_{k−1} + ΔW_k)/2 with ΔW_{−1} := ΔW_0, on the same
    Brownian increments as the solve (step k's from ``fold_in(key, k)``, ``StepBrownian``)."""
    from mfsde.dynamics._engine import StepBrownian

    x, y = neuron.make_data(jax.random.key(1), num_data=20, dim=3)
    fe = mfsde.FreeEnergy(neuron.unit, x, y, beta=30.0)
    p0 = fe.prior_sample(jax.random.key(2), 6)
    key, h, steps = jax.random.key(3), 0.05, 12
    traj = mfsde.langevin(fe, key, p0, t1=steps * h, dt0=h, ts=[steps * h], solver=mfsde.LeimkuhlerMatthews(),
                         diagnostics=False)
    shape = jax.ShapeDtypeStruct(p0.shape, p0.dtype)
    drift, g = LangevinDrift(fe), float(LangevinNoise(fe.beta)(0.0))

    @jax.jit
    def recursion(theta):
        def step(carry, k):
            theta, prev = carry
            t0 = k * h
            dw = StepBrownian(shape, diffrax.BrownianIncrement,
                              jax.random.fold_in(key, k.astype(jnp.int32))).evaluate(t0, t0 + h)
            prev = jnp.where(k == 0, dw, prev)
            return (theta + h * drift(t0, theta) + g * 0.5 * (prev + dw), dw), None

        return jax.lax.scan(step, (theta, jnp.zeros_like(theta)), jnp.arange(steps, dtype=theta.dtype))[0][0]

    theta = recursion(p0)
    np.testing.assert_allclose(traj.particles, theta, rtol=1e-10, atol=1e-12)
    assert not np.allclose(traj.particles, mfsde.langevin(fe, key, p0, t1=steps * h, dt0=h, ts=[steps * h],
                                                          solver=diffrax.Euler(), diagnostics=False).particles)


def _linear_system(fe, x, y, n, linear):
    """The N-particle linear drift b(Θ) = −K vec(Θ) + c: K = (1/N) 11ᵀ ⊗ Σ̂ + I/(βs²)."""
    sigma, _ = linear.moments(x, y)
    d = sigma.shape[0]
    return np.kron(np.ones((n, n)) / n, sigma) + np.eye(n * d) / (BETA * S**2)


def test_linear_stationary_law_exact(lin, linear):
    """The discrete-time stationary covariance of the N-particle linear system, exactly
    (discrete Lyapunov equations), against the continuous one (βK)⁻¹: Euler's error is first
    order (log-log slope in [0.9, 1.1] over h = 0.1 … 0.0125); Leimkuhler–Matthews's is zero
    to rounding at every h (it is exact for Gaussian targets: the order-2 statement holds
    with a vanishing constant). The chain of LM is Markov in (Θ_n, ξ_n)."""
    fe, x, y = lin
    n = 4
    k = _linear_system(fe, x, y, n, linear)
    m = k.shape[0]
    exact = np.linalg.inv(BETA * k)
    hs = np.array([0.1, 0.05, 0.025, 0.0125])
    err_euler, err_lm = [], []
    for h in hs:
        a, g = np.eye(m) - h * k, math.sqrt(2 * h / BETA)
        c_euler = solve_discrete_lyapunov(a, g**2 * np.eye(m))
        big_a = np.block([[a, 0.5 * g * np.eye(m)], [np.zeros((m, m)), np.zeros((m, m))]])
        big_b = np.vstack([0.5 * g * np.eye(m), np.eye(m)])
        c_lm = solve_discrete_lyapunov(big_a, big_b @ big_b.T)[:m, :m]
        err_euler.append(np.abs(c_euler - exact).max())
        err_lm.append(np.abs(c_lm - exact).max())
    slope = np.polyfit(np.log(hs), np.log(err_euler), 1)[0]
    assert 0.9 < slope < 1.1, (slope, err_euler)
    assert max(err_lm) < 1e-10 * np.abs(exact).max(), err_lm


def test_linear_simulation_lm_exact_euler_biased(lin):
    """The solvers themselves at a large step (h a = 0.8 on the prior modes, a = 1/(βs²) = 2):
    the stationary per-coordinate variance is s² for LM and s²/(1 − ha/2) = 1.67 s² for Euler.
    The sample variance of N = 20000 particles has sd s² sqrt(2/N) ≈ 0.01: |z| < 4.5."""
    fe, x, y = lin
    n, h = 20000, 0.4
    for solver, expected in ((mfsde.LeimkuhlerMatthews(), S**2), (diffrax.Euler(), S**2 / (1 - h / (BETA * S**2) / 2))):
        traj = mfsde.langevin(fe, jax.random.key(4), jnp.zeros((n, 3)), t1=30.0, dt0=h, ts=[30.0], solver=solver,
                              diagnostics=False)
        var = np.asarray(traj.particles.var(0))
        z = (var - expected) / (expected * math.sqrt(2 / n))
        assert np.all(np.abs(z) < 4.5), (type(solver).__name__, var, expected)


def _stationary_vector(t):
    w, v = np.linalg.eig(t.T)
    vec = np.real(v[:, np.argmin(np.abs(w - 1))])
    return vec / vec.sum()


def test_order_two_nonlinear(neuron):
    """Invariant-measure order on a non-Gaussian target: one tanh unit σ(x; w) = tanh(w x)
    (D = 1, N = 1), drift from mfsde's own LangevinDrift, p_1(w) ∝ π₀(w) exp(−(β/2) R). Each
    chain's stationary law is computed on a grid (1201 points on ±6, wide enough that no
    mass piles at its ends; no sampling): Euler's
    Gaussian kernel directly; LM through z_n = θ_n − sξ_n (s² = h/(2β)), which is Markov:
    z' = z + 2sξ + h b(z + sξ), integrated over ξ by 80-node Gauss–Hermite and put on the
    grid by 3-point interpolation that keeps the first two moments (the grid error is then
    small against LM's smallest bias: Euler's errors extrapolate to 0). The errors of E[w²]
    fall by ≈ 2x (Euler) and ≈ 4x (LM) per halving of h: slopes in [0.85, 1.15] and
    [1.7, 2.3] (measured 1.0 and 1.9; the LM ratios approach 4 from below as h shrinks)."""
    import numpyro
    import numpyro.distributions as dist

    def unit(x):
        w = numpyro.sample("w", dist.Normal(0.0, 1.0))
        return jnp.tanh(w * x[:, 0])

    x = jnp.linspace(-2.0, 2.0, 8)[:, None]
    y = jnp.tanh(1.5 * x[:, 0]) + 0.3
    beta = 4.0
    fe = mfsde.FreeEnergy(unit, x, y, beta=beta)
    drift = LangevinDrift(fe)
    b = jax.jit(jax.vmap(lambda w: drift(0.0, w[None, None])[0, 0]))
    grid = np.linspace(-6.0, 6.0, 1201)
    step = grid[1] - grid[0]
    risk = np.asarray(jax.vmap(lambda w: fe.risk(w[None, None]))(jnp.asarray(grid)))
    density = np.exp(-0.5 * grid**2 - 0.5 * beta * risk)
    exact = (density * grid**2).sum() / density.sum()
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    weights = weights / weights.sum()
    rows = np.arange(grid.size)
    hs = np.array([0.16, 0.08, 0.04])
    errs = {"euler": [], "lm": []}
    for h in hs:
        mean = grid + h * np.asarray(b(jnp.asarray(grid)))
        t = np.exp(-((grid[None, :] - mean[:, None]) ** 2) / (4 * h / beta))
        errs["euler"].append((_stationary_vector(t / t.sum(1, keepdims=True)) * grid**2).sum() - exact)
        s = math.sqrt(h / (2 * beta))
        t = np.zeros((grid.size, grid.size))
        for xi, wt in zip(nodes, weights):
            z = grid + 2 * s * xi + h * np.asarray(b(jnp.asarray(grid + s * xi)))
            idx = np.clip((z - grid[0]) / step, 1, grid.size - 2)
            j = np.rint(idx).astype(int)
            dl = idx - j
            for off, share in ((-1, (dl**2 - dl) / 2), (0, 1 - dl**2), (1, (dl**2 + dl) / 2)):
                np.add.at(t, (rows, j + off), wt * share)
        errs["lm"].append((_stationary_vector(t) * grid**2).sum() + s**2 - exact)
    slope_euler = np.polyfit(np.log(hs), np.log(np.abs(errs["euler"])), 1)[0]
    slope_lm = np.polyfit(np.log(hs), np.log(np.abs(errs["lm"])), 1)[0]
    assert 0.85 < slope_euler < 1.15, errs
    assert 1.7 < slope_lm < 2.3, errs
    assert np.all(np.abs(errs["lm"]) < 0.2 * np.abs(errs["euler"]))


def test_lm_needs_noise(lin):
    fe, x, y = lin
    ode = mfsde.FreeEnergy(fe.unit, x, y, beta=math.inf)
    with pytest.raises(ValueError, match="LeimkuhlerMatthews"):
        mfsde.langevin(ode, None, fe.prior_sample(jax.random.key(0), 4), t1=1.0, dt0=0.1,
                       solver=mfsde.LeimkuhlerMatthews())


def test_max_curvature_linear(lin, linear):
    """The N-particle linear drift's Jacobian is −K: λ_max = λ_max(Σ̂) + 1/(βs²) (the
    collective mode), to 1e-6 after power iteration."""
    fe, x, y = lin
    sigma, _ = linear.moments(x, y)
    lam = float(mfsde.max_curvature(fe, fe.prior_sample(jax.random.key(5), 10), num_iterations=200))
    assert lam == pytest.approx(np.linalg.eigvalsh(sigma).max() + 1 / (BETA * S**2), rel=1e-6)


def test_max_curvature_weighted_is_the_cloned_cloud(neuron):
    """Weights (3, 1, 1)/5 on three particles are the equal-weight cloud with the first
    particle copied three times: the weighted drift's Jacobian is the cloned one's on the
    modes that move the copies together, so λ_max(weighted) is an eigenvalue of the
    cloned cloud's dense Jacobian (jacfwd, eigvals) and at most its largest. The plain
    three-particle cloud is a different system: λ_max differs."""
    x, y = neuron.make_data(jax.random.key(1), num_data=20, dim=3)
    fe = mfsde.FreeEnergy(neuron.unit, x, y, beta=30.0)
    theta = fe.prior_sample(jax.random.key(2), 3)
    lam = float(mfsde.max_curvature(fe, mfsde.Particles(theta, jnp.log(jnp.array([3.0, 1.0, 1.0]))),
                                    num_iterations=400))
    cloned = jnp.concatenate([theta[:1], theta[:1], theta])
    jac = jax.jacfwd(LangevinDrift(fe), argnums=1)(0.0, cloned).reshape(cloned.size, cloned.size)
    eig = np.abs(np.linalg.eigvals(np.asarray(jac)))
    assert np.min(np.abs(eig - lam)) < 1e-6 * eig.max()
    assert lam <= eig.max() * (1 + 1e-9)
    plain = float(mfsde.max_curvature(fe, theta, num_iterations=400))
    assert abs(plain - lam) > 1e-3 * lam
