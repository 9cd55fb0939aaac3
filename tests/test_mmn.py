"""Mei–Montanari–Nguyen: population data, SGD vs the particle ODE, and the isotropic
d → ∞ reduction of models/gaussian_mixture.py (float64)."""

import math

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mfsde


@pytest.fixture(scope="module")
def gm(root):
    return mfsde.load_model(root / "models" / "gaussian_mixture.py")


def _population_risk(fe, w, n_blocks=10):
    """(mean, s.e.) over fe's evaluation sample of (y − f_N(x))² − Var_i σ(x; w_i)/N: the
    population risk of the law the N units are drawn from (the finite-N term removed,
    unbiased for iid units)."""
    n, d = w.shape
    f = fe.output(w)
    var = jax.lax.map(lambda xb: jnp.var(fe.features(w, xb), axis=0, ddof=1), fe.x.reshape(n_blocks, -1, d))
    per = (fe.y - f) ** 2 - var.reshape(-1) / n
    return float(per.mean()), float(per.std()) / math.sqrt(per.shape[0])


def test_projection_expectations_and_the_radial_prior(gm):
    """The finite-d reduction's pieces against Monte Carlo and closed forms:

    - E σ(cT), T = √d U (U the first coordinate of a uniform unit vector): the closed form
      for a ``PiecewiseLinear`` σ and Gauss–Jacobi for a smooth one against 10⁵ draws of
      T at d = 3, 5, 40 (within 4.5 s.e.), and against the Gaussian closed form at
      d = 10⁵ (the d → ∞ limit; |difference| < 10⁻⁴);
    - the tabulated tail P(T > z) and its derivative, the exact −density, against scipy's
      incomplete beta (1e-7) and a central difference of it (1e-6);
    - ``SignedChi(d, s)``: its density integrates to 1 and E r² = d s² (4.5 s.e.)."""
    from scipy.special import betainc

    from mfsde_models_gaussian_mixture import _projection_tail

    rng = np.random.default_rng(0)
    c = jnp.asarray([0.3, 1.0, 2.5])
    softplus = jax.nn.softplus
    for d in (3, 5, 40):
        u = rng.normal(size=(100_000, d))
        t = np.sqrt(d) * u[:, 0] / np.linalg.norm(u, axis=1)
        for act in (gm.truncated_relu, gm.FAILURE_ACTIVATION, softplus):
            vals = np.asarray(act(np.asarray(c)[:, None] * t[None, :]))
            exact = np.asarray(gm.projection_expectation(act, c, d, 64))
            assert np.all(np.abs(vals.mean(1) - exact) < 4.5 * vals.std(1) / math.sqrt(len(t))), (d, act)
    np.testing.assert_allclose(gm.projection_expectation(gm.truncated_relu, c, 100_000),
                               gm.gaussian_expectation(gm.truncated_relu, c), atol=1e-4)
    for d in (3, 10, 320):
        z = jnp.linspace(-0.95, 0.95, 7) * min(math.sqrt(d), 10.0)
        alpha, u = (d - 1) / 2, np.asarray(z) / math.sqrt(d)
        np.testing.assert_allclose(_projection_tail(z, d), 1 - betainc(alpha, alpha, (1 + u) / 2), atol=1e-7)
        h = 1e-4
        fd = (betainc(alpha, alpha, (1 + u - h) / 2) - betainc(alpha, alpha, (1 + u + h) / 2)) / (2 * h * math.sqrt(d))
        np.testing.assert_allclose(jax.vmap(jax.grad(lambda v: _projection_tail(v, d)))(z), fd, atol=1e-6)
    prior = gm.SignedChi(10, 0.3)
    grid = np.linspace(-4.0, 4.0, 80_001)
    assert abs(np.trapezoid(np.exp(np.asarray(prior.log_prob(jnp.asarray(grid)))), grid) - 1.0) < 1e-6
    r2 = np.asarray(prior.sample(jax.random.key(0), (100_000,))) ** 2
    assert abs(r2.mean() - 10 * 0.09) < 4.5 * r2.std() / math.sqrt(len(r2))


def test_reductions_against_the_population_risk(gm):
    """The risk of a reduction against the population risk of the d-dimensional law it
    stands for (``_population_risk`` on m = 10⁴ fresh pairs; tolerances 4.5 s.e.):

    - isotropic, w = r u (u uniform on the sphere): the finite-d reduction is exact at d = 10,
      where the d → ∞ one is off by O(1/d) (measured: 1.1 s.e. and 11 s.e.); as d grows the
      finite-d reduction tends to the d → ∞ one (gap 9e-3 at d = 100, 1e-4 at d = 10⁴);
    - anisotropic, w = (r₁ u₁, r₂ u₂) on blocks of s0 = d/4 and 3d/4: the d → ∞ reduction
      is off at d = 16 (23 s.e.) and within the noise at d = 320 (1.5 s.e.).

    The closed-form Gaussian expectation agrees with Gauss–Hermite (the kinks limit the
    rule to O(1/nodes), 0.026 at 300)."""
    n, m = 500, 10000
    r = 0.5 + jax.random.uniform(jax.random.key(0), (n, 1))
    c = jnp.linspace(0.1, 3.0, 50)
    gh = gm.gaussian_expectation(lambda t: gm.truncated_relu(t), c, 300)
    assert float(jnp.max(jnp.abs(gh - gm.gaussian_expectation(gm.truncated_relu, c)))) < 0.05

    d = 10
    fe = mfsde.FreeEnergy.from_sampler(gm.make_unit(d), gm.make_sampler(d, 0.8), float("inf"), jax.random.key(1),
                                       num_eval=m)
    full, se = _population_risk(fe, gm.lift(jax.random.key(2), r, d))
    assert abs(full - float(gm.reduced_problem(0.8, dim=d).risk(r))) < 4.5 * se
    assert abs(full - float(gm.reduced_problem(0.8).risk(r))) > 6 * se
    limit = float(gm.reduced_problem(0.8).risk(r))
    gaps = [abs(float(gm.reduced_problem(0.8, dim=d).risk(r)) - limit) for d in (100, 10_000)]
    assert gaps[1] < 0.03 * gaps[0], gaps

    r12 = 0.3 + jax.random.uniform(jax.random.key(3), (n, 2))
    reduced = float(gm.anisotropic_reduced_problem(0.8, 0.25).risk(r12))
    gaps, ses = [], []
    for d in (16, 320):
        fe = mfsde.FreeEnergy.from_sampler(gm.make_unit(d), gm.make_sampler(d, 0.8, d // 4), float("inf"),
                                           jax.random.key(4), num_eval=m)
        full, se = _population_risk(fe, gm.lift(jax.random.key(5), r12, d, d // 4))
        gaps.append(full - reduced)
        ses.append(se)
    assert abs(gaps[0]) > 4.0 * ses[0]
    assert abs(gaps[1]) < 4.5 * ses[1] + 1e-3, (gaps, ses)


def test_reduced_dynamics_is_a_particle_ode(gm):
    """The reduction runs through mfsde.langevin (β = ∞) on (N, 1) radii: the risk falls
    monotonically from the MMN initialisation."""
    fe = gm.reduced_problem(0.8)
    r0 = gm.init_radii(jax.random.key(3), 10_000, 40)
    traj = mfsde.langevin(fe, jax.random.key(4), r0, t1=5.0, dt0=0.01, diagnostics=False)
    risk = np.asarray(traj.observables["risk"])
    assert np.all(np.diff(risk) <= 1e-12) and risk[-1] < 0.7 * risk[0]


def test_one_pass_sgd_population_sampler(gm):
    """One-pass SGD draws fresh pairs from the sampler; its population risk falls."""
    d = 10
    fe = mfsde.FreeEnergy.from_sampler(gm.make_unit(d), gm.make_sampler(d, 0.8), float("inf"),
                                       jax.random.key(0), num_eval=2000)
    th0 = fe.prior_sample(jax.random.key(1), 200)
    tr = mfsde.sgd(fe, jax.random.key(2), th0, num_steps=400, step_size=0.02, batch_size=4)
    risk = np.asarray(tr.observables["risk"])
    assert risk[-1] < 0.7 * risk[0]
    with pytest.raises(ValueError, match="batch_size"):
        mfsde.sgd(fe, jax.random.key(2), th0, num_steps=10, step_size=0.02)
    # the sampler as an argument of sgd: the same chain from a plain FreeEnergy on the same
    # evaluation sample (a shorter run; the compiled step is shared)
    plain = mfsde.FreeEnergy(fe.unit, fe.x, fe.y, float("inf"))
    short = dict(num_steps=40, step_size=0.02, batch_size=4)
    np.testing.assert_allclose(mfsde.sgd(plain, jax.random.key(2), th0, sampler=gm.make_sampler(d, 0.8),
                                         **short).particles,
                               mfsde.sgd(fe, jax.random.key(2), th0, **short).particles, rtol=1e-12)
    with pytest.raises(ValueError, match=r"sampler\(key, 8\)"):
        mfsde.FreeEnergy.from_sampler(fe.unit, lambda k, b: (jnp.zeros((b, d)), jnp.zeros(b + 1)), 1.0,
                                      jax.random.key(0), num_eval=8)


def test_sgd_tracks_particle_ode(neuron):
    """Full-batch SGD is Euler for the particle ODE dθ/dt = −∇Ψ: its error at t = 2 against
    an adaptive Tsit5 solve falls linearly with the step ε; minibatch SGD's error falls too
    (like sqrt(ε) from the gradient noise)."""
    x, y = neuron.make_data(jax.random.key(0), num_data=128, dim=4)
    fe = mfsde.FreeEnergy(neuron.make_unit(1.0, 1.0), x, y, float("inf"))
    th0 = fe.prior_sample(jax.random.key(1), 256)
    ode = mfsde.langevin(fe, jax.random.key(2), th0, t1=2.0, dt0=0.01, solver=diffrax.Tsit5(),
                         stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-10), diagnostics=False)

    def err(eps, batch=None, key=3):
        tr = mfsde.sgd(fe, jax.random.key(key), th0, num_steps=round(2.0 / eps), step_size=eps, batch_size=batch, save_every=10**6)
        return float(jnp.max(jnp.abs(tr.particles - ode.particles)))

    e1, e2 = err(0.04), err(0.01)
    assert 3.0 < e1 / e2 < 5.0                          # first order: 4
    m1, m2 = err(0.04, 16), err(0.0025, 16)
    assert m2 < 0.5 * m1                                # sqrt(16) = 4 expected


def _finite_n_corrected_risk(fe):
    """θ ↦ R(ρ^N) − E_x Var_i σ(x; θ_i)/N: the population risk of the law the N units are
    drawn from (the N-unit network's own variance term removed), on fe's evaluation sample."""
    def corrected(theta):
        feats = fe.features(theta, fe.x)
        return fe.risk(theta) - jnp.mean(jnp.var(feats, axis=0, ddof=1)) / theta.shape[0]

    return corrected


def test_noisy_finite_d_reduction_against_the_full_problem(gm):
    """Noisy dynamics at d = 10, β = 20 (prior N(0, κ²/d I), κ = 0.8): the exact finite-d
    reduction on r, whose Langevin drift carries (d − 1)/(βr) through the SignedChi prior,
    against the full 10-dimensional problem.

    - Stationary law: the reduced particles' |r| and the full Langevin run's ‖w‖ at t = 6
      (both relaxed by t ≈ 3) have the same mean and s.d. within 4 s.e. (s.e. of the two
      independent clouds, N = 600 and 300; the full problem's evaluation sample is
      antithetic, x and −x, so that its fixed point has no odd anisotropy).
    - Risk curve: noisy one-pass SGD (B = 1, η = 0.004, relaxed by t ≈ 1) from w₀ and the
      reduced dynamics from ‖w₀‖ agree at every save to t = 2.4 within 4.5 × the evaluation
      sample's s.e. of the risk plus 0.02 (the SGD chain's own fluctuation at N = 400;
      measured gaps ≤ 0.03, s.e. 0.016); the SGD risk is taken without its finite-N
      variance term, which the reduction (N directions averaged out) lacks."""
    d, beta, t1 = 10, 20.0, 6.0
    red = gm.reduced_problem(0.8, beta=beta, dim=d, num_radii=32)
    rr = mfsde.langevin(red, jax.random.key(1), gm.init_radii(jax.random.key(0), 600, d), t1=t1, dt0=0.03,
                        diagnostics=False, ts=[0.0, t1])
    r = np.abs(np.asarray(rr.particles[:, 0]))
    x, y = gm.make_sampler(d, 0.8)(jax.random.key(2), 2048)
    fe = mfsde.FreeEnergy(gm.make_unit(d), jnp.concatenate([x, -x]), jnp.concatenate([y, y]), beta)
    full = mfsde.langevin(fe, jax.random.key(4), fe.prior_sample(jax.random.key(3), 300), t1=t1, dt0=0.03,
                          diagnostics=False, ts=[0.0, t1])
    w = np.linalg.norm(np.asarray(full.particles), axis=1)
    se_mean = math.hypot(r.std() / math.sqrt(len(r)), w.std() / math.sqrt(len(w)))
    se_sd = math.hypot(r.std() / math.sqrt(2 * len(r)), w.std() / math.sqrt(2 * len(w)))
    assert abs(r.mean() - w.mean()) < 4 * se_mean, (r.mean(), w.mean(), se_mean)
    assert abs(r.std() - w.std()) < 4 * se_sd, (r.std(), w.std(), se_sd)

    pop = mfsde.FreeEnergy.from_sampler(gm.make_unit(d), gm.make_sampler(d, 0.8), beta, jax.random.key(5), num_eval=4096)
    w0 = pop.prior_sample(jax.random.key(6), 400)
    eta, steps = 0.004, 600
    sgd = mfsde.sgd(pop, jax.random.key(7), w0, num_steps=steps, step_size=eta, batch_size=1, save_every=steps // 6,
                    observables={"risk_mf": _finite_n_corrected_risk(pop)})
    reduced = mfsde.langevin(red, jax.random.key(8), jnp.linalg.norm(w0, axis=1, keepdims=True), t1=steps * eta,
                             dt0=eta, ts=np.asarray(sgd.ts), diagnostics=False)
    gap = np.abs(np.asarray(sgd.observables["risk_mf"]) - np.asarray(reduced.observables["risk"]))
    se = float(jnp.std((pop.y - pop.output(sgd.particles)) ** 2)) / math.sqrt(pop.num_data)
    assert np.all(gap < 4.5 * se + 0.02), (gap, se)


def test_anisotropic_reduced_dynamics_tracks_sgd_as_d_grows(gm):
    """The (r₁, r₂) reduction (s0 = d/4) against one-pass SGD (B = 32, η = 0.01) from the same
    start: the largest risk gap over t ∈ [0, 4] shrinks with d (measured 0.23, 0.050 at
    d = 16, 160; what is left at 160 is mostly the N = 500 network's own variance term
    Var σ / N, which the reduction, an N → ∞ limit, does not have)."""
    red = gm.anisotropic_reduced_problem(0.8, 0.25)
    n, t1, eta = 500, 4.0, 0.01
    gaps = []
    for d in (16, 160):
        fe = mfsde.FreeEnergy.from_sampler(gm.make_unit(d), gm.make_sampler(d, 0.8, d // 4), float("inf"),
                                           jax.random.key(1), num_eval=20000)
        w0 = fe.prior_sample(jax.random.key(2), n)
        r0 = jnp.stack([jnp.linalg.norm(w0[:, : d // 4], axis=1), jnp.linalg.norm(w0[:, d // 4:], axis=1)], axis=1)
        rr = mfsde.langevin(red, jax.random.key(3), r0, t1=t1, dt0=eta, diagnostics=False, ts=np.linspace(0, t1, 5))
        tr = mfsde.sgd(fe, jax.random.key(4), w0, num_steps=round(t1 / eta), step_size=eta, batch_size=32, save_every=100)
        gaps.append(float(np.max(np.abs(np.asarray(tr.observables["risk"]) - np.asarray(rr.observables["risk"])))))
    assert gaps[0] > 3.0 * gaps[1] and gaps[1] < 0.07, gaps


def test_reduced_dynamics_predict_failure(gm):
    """MMN's "predicting failure" (tutorials/mmn_anisotropic.py at d = 320): classes of s.d.
    √1.5 and √0.5, the non-monotone ``FAILURE_ACTIVATION``. The d → ∞ reduction from
    r ≈ κ predicts, before any SGD: κ = 0.4 stalls at the bad stationary point r ≈ 0.2
    (reduced risk 1.156), κ = 2.5 converges (reduced risk < 0.01 by t = 8). One-pass SGD
    at d = 40, N = 400 (B = 1, η = 10⁻³) does the same: risk > 1.0 against < 0.3 at
    t = 8 (measured 1.18 and 0.19; what separates 0.19 from 0 is the N = 400 network's
    variance term and d = 40 against d = ∞)."""
    d, n, eta, t1 = 40, 400, 1e-3, 8.0
    act, scales = gm.FAILURE_ACTIVATION, gm.FAILURE_SCALES
    red = gm.reduced_problem(scales, act)
    final = {}
    for kappa in (0.4, 2.5):
        rr = mfsde.langevin(red, jax.random.key(1), gm.init_radii(jax.random.key(0), 2000, d, kappa), t1=t1, dt0=0.01,
                            diagnostics=False, ts=[0.0, t1])
        fe = mfsde.FreeEnergy.from_sampler(gm.make_unit(d, kappa, act), gm.make_sampler(d, scales), float("inf"),
                                           jax.random.key(2), num_eval=4000)
        tr = mfsde.sgd(fe, jax.random.key(4), fe.prior_sample(jax.random.key(3), n), num_steps=round(t1 / eta),
                       step_size=eta, batch_size=1, save_every=round(t1 / eta))
        final[kappa] = float(rr.observables["risk"][-1]), float(tr.observables["risk"][-1])
    assert final[0.4][0] > 1.1 and final[2.5][0] < 0.01, final
    assert final[0.4][1] > 1.0 and final[2.5][1] < 0.3, final


def test_planted_reduction_arc_cosine_kernel_and_risk(neuron):
    """The (a, s, r) reduction: for ReLU its interaction E_{G1}[h h'] is the arc-cosine kernel
    a a'(n n'/2π)(sin φ + (π − φ) cos φ) (the equal-weight quantile rule in G1 is accurate to
    7e-5 at 2048 nodes, 1e-3 at 512); for tanh its risk equals the d = 64 population risk
    of units w = s w* + r u (u ⊥ w* uniform) within 4.5 s.e. (finite-N term removed; measured
    gaps 0.7 s.e. at d = 16 and 0.1 s.e. at d = 128)."""
    red = neuron.reduced_problem(neuron.relu, num_nodes=512)
    t1, t2 = jnp.array([0.7, 0.5, 0.9]), jnp.array([-1.2, 1.1, 0.3])      # flat order (a, r, s)
    u = float(jnp.mean(red.unit.apply(t1, red.x) * red.unit.apply(t2, red.x)))
    n1, n2 = math.hypot(0.9, 0.5), math.hypot(0.3, 1.1)
    c = 0.9 * 0.3 / (n1 * n2)
    phi = math.acos(c)
    assert abs(u - 0.7 * -1.2 * n1 * n2 / (2 * math.pi) * (math.sin(phi) + (math.pi - phi) * c)) < 1e-3

    red = neuron.reduced_problem(jnp.tanh)
    n, d, m = 500, 64, 10000
    th = neuron.init_reduced(jax.random.key(0), n, 16).at[:, 2].add(0.4)
    v = red.unflatten(th)
    x = jax.random.normal(jax.random.key(1), (m, d))
    w_star = jnp.zeros(d).at[0].set(1.0)
    fe = mfsde.FreeEnergy(neuron.make_unit(), x, jnp.tanh(x[:, 0]), float("inf"))
    perp = jax.random.normal(jax.random.key(2), (n, d)).at[:, 0].set(0.0)
    w = v["s"][:, None] * w_star + v["r"][:, None] * perp / jnp.linalg.norm(perp, axis=1, keepdims=True)
    parts = jnp.concatenate([v["a"][:, None], w], axis=1)
    var = jax.lax.map(lambda xb: jnp.var(fe.features(parts, xb), axis=0, ddof=1), x.reshape(10, -1, d))
    per = (fe.y - fe.output(parts)) ** 2 - var.reshape(-1) / n
    assert abs(float(per.mean()) - float(red.risk(th))) < 4.5 * float(per.std()) / math.sqrt(m) + 1e-3
