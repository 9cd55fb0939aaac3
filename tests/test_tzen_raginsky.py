"""Tzen–Raginsky's bridge and greedy SDEs, and SGD, against closed forms (float64).

Linear case (docs/design.md §5): Ψ(v; ρ*) = g·v with g = Σ̂m* − ĉ = −m*/(βs²), so Q_{w,t} is
N(w + (1 − t)m*, (1 − t)s²I), u* ≡ m*, Law(W_1) = N(m*, s²I), cost = ‖m*‖²/(2s²) = KL and
log Z = log E_π₀ e^{m*·θ/s²} = ‖m*‖²/(2s²). Nonlinear case: a two-parameter unit whose
fixed point, KL and log Z are computed by quadrature on a grid (exact to ~1e-10).
"""

import math

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import mfsde

BETA = 4.0
N = 2000
Z45 = 4.5  # two-sided 4.5-sd bounds: a false failure per check has probability ~7e-6


@pytest.fixture(scope="module")
def linear_case(linear):
    x, y = linear.make_data(jax.random.key(0), 200, 3)
    fe = mfsde.FreeEnergy(linear.unit, x, y, BETA)
    m_star = linear.fixed_point_mean(x, y, BETA)
    kl = linear.kl_fixed_point(x, y, BETA)
    pool = m_star + jax.random.normal(jax.random.key(1), (4000, 3))
    return fe, x, y, m_star, kl, pool


def test_bridge_linear_closed_form(linear_case):
    fe, x, y, m_star, kl, pool = linear_case
    br = mfsde.schrodinger_bridge(fe, x @ m_star, jax.random.key(2), N, dt0=0.05, num_inner=8, samples=pool,
                                  log_normalizer=kl)
    w1 = np.asarray(br.particles)
    # Law(W_1) = N(m*, I): mean s.e. 1/√N, variance s.e. sqrt(2/N) per coordinate.
    assert np.all(np.abs(w1.mean(0) - m_star) < Z45 / math.sqrt(N))
    assert np.all(np.abs(w1.var(0) - 1.0) < Z45 * math.sqrt(2.0 / N))
    # u* ≡ m* exactly (∇Ψ is constant), so every particle's cost is ‖m*‖²/2 = KL.
    assert abs(float(br.observables["control_cost"][-1]) - kl) < 1e-9 * kl
    assert float(br.observables["control_cost"][0]) == 0.0
    # J = KL + (β/2) R_N(W_1); R_N − R(ρ*) = 2g·e + eᵀΣ̂e with e = W̄ − m* ~ N(0, I/N).
    sigma, c = np.asarray(x.T @ x / 200), np.asarray(x.T @ y / 200)
    g = sigma @ m_star - c
    r_star = float(np.mean((np.asarray(x @ m_star) - np.asarray(y)) ** 2))
    excess = float(br.observables["total_cost"][-1]) - (kl + 0.5 * BETA * (r_star + np.trace(sigma) / N))
    sd = 0.5 * BETA * (2 * np.linalg.norm(g) / math.sqrt(N) + math.sqrt(2 * np.trace(sigma @ sigma)) / N)
    assert abs(excess) < Z45 * sd
    assert br.observables["inner_ess"].shape == br.ts.shape


def test_bridge_inner_ess_linear(linear_case):
    """The Gaussian proposal equals Q in the linear case: uniform weights, ESS = n_inner."""
    fe, x, y, m_star, kl, pool = linear_case
    br = mfsde.schrodinger_bridge(fe, x @ m_star, jax.random.key(3), 64, dt0=0.1, num_inner=8, estimator="gaussian")
    np.testing.assert_allclose(np.asarray(br.observables["inner_ess"]), 8.0, rtol=1e-9)
    # ρ*-draws alone are exact at t = 0 and degenerate towards t = 1.
    br = mfsde.schrodinger_bridge(fe, x @ m_star, jax.random.key(3), 64, dt0=0.1, num_inner=32,
                                  estimator="fixed_point", samples=pool)
    ess = np.asarray(br.observables["inner_ess"])
    assert ess[0] == pytest.approx(32.0) and ess[-1] < 4.0


def test_greedy_linear_and_optimality(linear_case):
    """Greedy SDE: W̄_{k+1} = W̄_k − h βΣ(Σ̂W̄_k − ĉ) + √h z̄_k exactly (drift linear in the
    mean), so W̄_1 ~ N(m_n, C_n) from the recursions; its J exceeds β F(ρ*) = min J."""
    fe, x, y, m_star, kl, pool = linear_case
    h, n = 0.02, 50
    mv = mfsde.mckean_vlasov(fe, jax.random.key(4), N, dt0=h)
    sigma, c = np.asarray(x.T @ x / 200), np.asarray(x.T @ y / 200)
    b = np.eye(3) - h * BETA * sigma
    m, cov, cost = np.zeros(3), np.zeros((3, 3)), 0.0
    for _ in range(n):
        u = -BETA * (sigma @ m - c)
        cost += 0.5 * h * (u @ u + BETA**2 * np.trace(sigma @ cov @ sigma))
        m, cov = b @ m + h * BETA * c, b @ cov @ b.T + h * np.eye(3) / N
    e = np.asarray(mv.particles.mean(0)) - m
    assert e @ np.linalg.solve(cov, e) < 25.0  # chi²(3) exceeds 25 with probability 1.5e-5
    np.testing.assert_allclose(np.asarray(mv.particles.var(0)), 1.0, atol=Z45 * math.sqrt(2.0 / N))
    # The cost's fluctuation: each step's u deviates by βΣ̂δ_k with ‖δ_k‖ <= 4.5 sqrt(tr C_k).
    tol = Z45 * BETA * np.linalg.norm(sigma, 2) * math.sqrt(np.trace(cov)) * 2 * math.sqrt(2 * cost)
    assert abs(float(mv.observables["control_cost"][-1]) - cost) < tol
    r_star = float(np.mean((np.asarray(x @ m_star) - np.asarray(y)) ** 2))
    beta_f = kl + 0.5 * BETA * r_star
    assert float(mv.observables["total_cost"][-1]) > beta_f + 1.0  # here J_greedy ≈ 2.7 β F


# -- a nonlinear unit with a quadrature reference (models/scalar_tanh.py) -------------------
@pytest.fixture(scope="module")
def nonlinear_case(root):
    st = mfsde.load_model(root / "models" / "scalar_tanh.py")
    x, y = st.make_data(jax.random.key(0))
    beta = st.DEFAULTS["beta"]
    fe = mfsde.FreeEnergy(st.unit, x, y, beta)
    ref = st.fixed_point_quadrature(x, y, beta)
    assert ref["residual"] < 1e-10
    return fe, ref["output"], st.sample_quadrature(jax.random.key(2), ref, 8000), ref


def test_bridge_nonlinear_reaches_fixed_point(nonlinear_case):
    """Law(W_1) ≈ ρ*, cost ≈ KL(ρ*‖π₀), J ≈ β F(ρ*), and W_1 passes check_fixed_point.

    Tolerances: 4.5 Monte Carlo s.e. (from the N = 4000 particles) plus an allowance for the
    discretisation and inner-sampling bias, O(dt) + O(1/n_inner), measured on this problem
    against the quadrature reference (KL 0.730): cost −0.060 (dt0 = 0.02, n_inner = 32),
    −0.021 (0.01, 64), −0.016 (0.005, 64); variances within 4%. Allowance: 0.1 KL and 5% of
    each moment.
    """
    fe, f_star, pool, ref = nonlinear_case
    n = 4000
    br = mfsde.schrodinger_bridge(fe, f_star, jax.random.key(3), n, dt0=0.01, num_inner=64, samples=pool,
                                  log_normalizer=ref["log_z"])
    w1 = np.asarray(br.particles)
    obs = {k: float(v[-1]) for k, v in br.observables.items()}
    assert abs(obs["control_cost"] - ref["kl"]) < Z45 * obs["control_cost_se"] + 0.1 * ref["kl"]
    abs_a = np.abs(w1[:, 0])
    assert abs(abs_a.mean() - ref["abs_a"]) < Z45 * abs_a.std() / math.sqrt(n) + 0.05 * ref["abs_a"]
    sq = w1**2
    assert np.all(np.abs(w1.var(0) - ref["var"]) < Z45 * sq.std(0) / math.sqrt(n) + 0.05 * ref["var"])
    # J − β F: the cost's error plus (β/2)(R_N − R*), R_N's s.e. ~ β‖∇R‖/√N is below 0.02 here.
    assert abs(obs["total_cost"] - ref["beta_f"]) < Z45 * obs["control_cost_se"] + 0.1 * ref["kl"] + 0.05
    check = mfsde.check_fixed_point(fe, jax.random.key(4), br.particles, num_warmup=300, num_samples=500)
    assert check.passed, check.reason
    # the inner ESS never collapses: MIS keeps at least the Gaussian half near t = 1
    assert float(np.min(br.observables["inner_ess_min"])) >= 2.0


def test_bridge_rejects_bad_input(linear_case, neuron):
    fe, x, y, m_star, kl, pool = linear_case
    out = x @ m_star
    with pytest.raises(ValueError, match="multiple of 4"):
        mfsde.schrodinger_bridge(fe, out, jax.random.key(0), 10, num_inner=6, samples=pool, log_normalizer=kl)
    with pytest.raises(ValueError, match="estimator"):
        mfsde.schrodinger_bridge(fe, out, jax.random.key(0), 10, estimator="bad")
    with pytest.raises(ValueError, match=r"\(P,\)"):
        mfsde.schrodinger_bridge(fe, out[:5], jax.random.key(0), 10, samples=pool, log_normalizer=kl)
    with pytest.raises(ValueError, match="time_grid"):
        mfsde.schrodinger_bridge(fe, out, jax.random.key(0), 10, samples=pool, log_normalizer=kl, time_grid="cubic")
    with pytest.raises(ValueError, match="num_particles"):
        mfsde.mckean_vlasov(fe, jax.random.key(0), 0)
    with pytest.raises(ValueError, match="multiple of 4"):
        mfsde.schrodinger_bridge(fe, out, jax.random.key(0), 10, num_inner=6, samples=pool, log_normalizer=kl)
    # no compatibility names before a first release
    with pytest.raises(TypeError, match="n_particles"):
        mfsde.mckean_vlasov(fe, jax.random.key(0), n_particles=3)
    inf = mfsde.FreeEnergy(fe.unit, fe.x, fe.y, float("inf"))
    with pytest.raises(ValueError, match="finite beta"):
        mfsde.mckean_vlasov(inf, jax.random.key(0), 10)

    def gamma_unit(x):
        s = numpyro.sample("s", dist.Gamma(2.0, 1.0))
        return s * x[:, 0]

    with pytest.raises(ValueError, match="Gaussian prior"):
        mfsde.mckean_vlasov(mfsde.FreeEnergy(gamma_unit, fe.x, fe.y, 1.0), jax.random.key(0), 10)


def test_sgd_full_batch_is_exact_gradient_descent(linear_case, linear):
    """Noiseless full-batch SGD with the prior drift: the particle mean follows
    m ← m − η(A m − ĉ), A = Σ̂ + I/(βs²), exactly (the update is affine)."""
    fe, x, y, m_star, kl, pool = linear_case
    th0 = fe.prior_sample(jax.random.key(5), 300)
    eta, k = 0.05, 120
    tr = mfsde.sgd(fe, jax.random.key(6), th0, num_steps=k, step_size=eta, noise=False, prior_drift=True, save_every=40)
    a, (_, c) = linear.drift_matrix(x, y, BETA), linear.moments(x, y)
    m = np.asarray(th0.mean(0))
    for _ in range(k):
        m = m - eta * (a @ m - c)
    np.testing.assert_allclose(np.asarray(tr.particles.mean(0)), m, atol=1e-10)
    np.testing.assert_allclose(np.asarray(tr.ts), [0.0, 2.0, 4.0, 6.0])
    assert float(tr.observables["max_displacement"][0]) == 0.0


def test_sgd_noisy_minibatch_reaches_fixed_point(linear_case):
    """Noisy minibatch SGD is Euler–Maruyama with a stochastic gradient: its particle mean
    ends near m* (s.e. ~ 1/√N, plus the minibatch noise ~ sqrt(η/B) per coordinate)."""
    fe, x, y, m_star, kl, pool = linear_case
    n = 1000
    tr = mfsde.sgd(fe, jax.random.key(7), fe.prior_sample(jax.random.key(8), n), num_steps=3000, step_size=0.01, batch_size=16)
    w = np.asarray(tr.particles)
    assert np.all(np.abs(w.mean(0) - m_star) < Z45 * (1 / math.sqrt(n) + math.sqrt(0.01 / 16) * 3))
    assert np.all(np.abs(w.var(0) - 1.0) < 0.15)


def test_sgd_rejects_bad_input(linear_case):
    fe, *_ = linear_case
    th0 = fe.prior_sample(jax.random.key(0), 10)
    with pytest.raises(ValueError, match="step_size"):
        mfsde.sgd(fe, jax.random.key(0), th0, num_steps=10, step_size=-1.0)
    with pytest.raises(ValueError, match="num_steps"):
        mfsde.sgd(fe, jax.random.key(0), th0, num_steps=0, step_size=0.1)
    with pytest.raises(ValueError, match="shape"):
        mfsde.sgd(fe, jax.random.key(0), th0[:, :2], num_steps=10, step_size=0.1)
    with pytest.raises(ValueError, match="batch_size"):
        mfsde.sgd(fe, jax.random.key(0), th0, num_steps=10, step_size=0.1, batch_size=0)
