# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Mei–Montanari–Nguyen: SGD vs distributional dynamics on the isotropic mixture
#
# y = ±1, x | y ~ N(0, (1 ± Δ)² I_d), units σ_*(⟨w, x⟩) with MMN's truncated ReLU, N units
# initialised at w ~ N(0, 0.8²/d I). One-pass SGD (a fresh pair per step) follows the
# McKean–Vlasov PDE, which for this rotation-invariant problem reduces (d → ∞) to a 1-D
# particle system in r = ‖w‖ (`models/gaussian_mixture.py`, run with `mfsde.langevin`).
# Time is mfsde's: one SGD step of size η is time η (MMN's t = kε is half of it, η = 2ε).
# At finite d the same reduction is exact (`gm.reduced_problem(delta, dim=d)`: the projection
# ⟨u, x⟩ of a uniform direction is Beta-distributed, not Gaussian, and ‖x‖ is χ_d): with noise
# its Langevin drift carries the radial Itô term (d − 1)/(βr) (section 2). Section 3 measures
# MMN's error bound, SGD against the exact finite-d dynamics, on a grid of N and ε.
# Set `MFSDE_SMOKE=1` for a tiny run.

# %%
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import mfsde  # noqa: E402

SMOKE = os.environ.get("MFSDE_SMOKE", "") not in ("", "0")
OUT = pathlib.Path(os.environ.get("MFSDE_RUNS", "runs")) / "mmn_isotropic"
OUT.mkdir(parents=True, exist_ok=True)
ROOT = pathlib.Path(mfsde.__file__).resolve().parents[1]
gm = mfsde.load_model(ROOT / "models" / "gaussian_mixture.py")
d, N, N_RED = (10, 100, 1000) if SMOKE else (40, 800, 10_000)
# One step moves a unit by η (y − ŷ)σ'x with ‖x‖² ≈ d(1 + Δ)² and σ' = 10: SGD follows the
# PDE only for η ≪ 1/(10 d (1+Δ)²) (η = 0.02 at d = 40 diverges: risk 1.0 -> 2.7).
DELTA, ETA = 0.8, (0.005 if SMOKE else 0.00025)
CHECKPOINTS = (0.0, 2.0) if SMOKE else (0.0, 2.0, 10.0, 40.0)

# %% [markdown]
# ## 1. SGD and the reduced dynamics

# %%
fe = mfsde.FreeEnergy.from_sampler(gm.make_unit(d), gm.make_sampler(d, DELTA), float("inf"), jax.random.key(0),
                                   num_eval=4000)
red = gm.reduced_problem(DELTA)
red_d = gm.reduced_problem(DELTA, dim=d)  # exact at this d (population data)
w = fe.prior_sample(jax.random.key(1), N)
r = gm.init_radii(jax.random.key(2), N_RED, d)
r_d = r
ts_sgd, risk_sgd, ts_red, risk_red, risk_red_d = [], [], [], [], []
norms = {0.0: (np.linalg.norm(w, axis=1), np.asarray(r[:, 0]))}
for i, (a, b) in enumerate(zip(CHECKPOINTS[:-1], CHECKPOINTS[1:])):
    steps = round((b - a) / ETA)
    tr = mfsde.sgd(fe, jax.random.key(10 + i), w, num_steps=steps, step_size=ETA, batch_size=1, save_every=max(1, steps // 20),
                   progress=False)
    rd = mfsde.langevin(red, jax.random.key(20 + i), r, t1=b - a, dt0=0.01, diagnostics=False)
    rd_d = mfsde.langevin(red_d, jax.random.key(20 + i), r_d, t1=b - a, dt0=0.01, diagnostics=False)
    w, r, r_d = tr.particles, rd.particles, rd_d.particles
    ts_sgd.append(a + np.asarray(tr.ts))
    risk_sgd.append(np.asarray(tr.observables["risk"]))
    ts_red.append(a + np.asarray(rd.ts))
    risk_red.append(np.asarray(rd.observables["risk"]))
    risk_red_d.append(np.asarray(rd_d.observables["risk"]))
    norms[b] = (np.linalg.norm(w, axis=1), np.asarray(r[:, 0]))
    print(f"t={b:5.1f}: SGD risk {risk_sgd[-1][-1]:.4f}, reduced d → ∞ {risk_red[-1][-1]:.4f}, "
          f"exact at d = {d}: {risk_red_d[-1][-1]:.4f}")

fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
ax[0].plot(np.concatenate(ts_sgd), np.concatenate(risk_sgd), ".", ms=3, label=f"SGD d={d}, N={N}")
ax[0].plot(np.concatenate(ts_red), np.concatenate(risk_red), "k-", label="reduced (d → ∞)")
ax[0].plot(np.concatenate(ts_red), np.concatenate(risk_red_d), "r--", label=f"reduced, exact at d = {d}")
ax[0].set_xlabel("t")
ax[0].set_ylabel("risk")
ax[0].legend()
for t, (wn, rn) in norms.items():
    ax[1].hist(wn, bins=30, density=True, alpha=0.4, label=f"SGD ‖w‖, t={t:g}")
    ax[1].hist(np.abs(rn), bins=60, density=True, histtype="step", color="k")
ax[1].set_xlabel("‖w‖ (lines: reduced r)")
ax[1].legend(fontsize=7)
fig.tight_layout()
fig.savefig(OUT / "risk_and_norms.png", dpi=120)

# %% [markdown]
# ## 2. Noisy dynamics at finite d: the reduction with the Itô drift
# With noise, θ ← θ + η[−∇̂Ψ + β⁻¹∇log π₀] + sqrt(2η/β) g with prior π₀ = N(0, κ²/d I) (the
# initialisation law; MMN's λ = d/(κ²β)). For an isotropic law the radius r = ‖w‖ is then a
# Langevin process with the extra drift (d − 1)/(βr): the score of the radial prior
# π̄₀(r) ∝ r^{d−1} e^{−r²d/2κ²} (`gm.SignedChi`), which `gm.reduced_problem(delta, beta, dim=d)`
# uses as the prior of its one coordinate. Its stationary law is checked against the full
# d-dimensional problem at d = 10, 20, 40: a noisy Langevin run of the full problem (4
# replicates, antithetic evaluation sample x, −x so that the fixed point has no odd
# anisotropy) that `check_fixed_point` certifies, whose ‖w‖ and whose MCMC draws of
# G[f_N] (≈ ρ*) have the law of the reduced |r|. The truncated ReLU has kinks, where
# autodiff's Hessian misses point masses: `check_fixed_point` finds that
# (`mfsde.curvature_defect`) and judges on its snapshot test alone, without the
# configurational temperature (whose Stein identity needs a C² potential).

# %%
BETA, KAPPA = 20.0, 0.8
DIMS = (10,) if SMOKE else (10, 20, 40)
N_FULL, P_FULL, T_FULL, N_RED2 = (50, 256, 2.0, 200) if SMOKE else (400, 4096, 20.0, 4000)
DT_FULL, DT_RED = (0.02, 0.02) if SMOKE else (0.01, 0.005)
stationary = {}
fig, axes = plt.subplots(1, len(DIMS), figsize=(4.2 * len(DIMS), 3.4), squeeze=False)
for dim, ax in zip(DIMS, axes[0]):
    started = time.perf_counter()
    red_noisy = gm.reduced_problem(DELTA, beta=BETA, dim=dim, init_scale=KAPPA)
    rn = mfsde.langevin(red_noisy, jax.random.key(40), gm.init_radii(jax.random.key(41), N_RED2, dim, KAPPA),
                        t1=10.0 if not SMOKE else T_FULL, dt0=DT_RED, diagnostics=False, progress=False)
    r_law = np.abs(np.asarray(rn.particles[:, 0]))
    x2, y2 = gm.make_sampler(dim, DELTA)(jax.random.key(42), P_FULL // 2)
    fe_full = mfsde.FreeEnergy(gm.make_unit(dim, KAPPA), jnp.concatenate([x2, -x2]), jnp.concatenate([y2, y2]), BETA)
    keys = jax.random.split(jax.random.key(43), 4)
    full = mfsde.langevin(fe_full, keys, mfsde.overdispersed_starts(fe_full, jax.random.key(44), 4, N_FULL),
                          t1=T_FULL, dt0=DT_FULL, progress=False)
    check = mfsde.check_fixed_point(fe_full, jax.random.key(45), full, num_warmup=50 if SMOKE else 400,
                                    num_samples=50 if SMOKE else 500, diagnose=not SMOKE)
    print(check.reason)
    w_law = np.linalg.norm(np.asarray(full.particles).reshape(-1, dim), axis=1)
    g_law = np.linalg.norm(np.asarray(check.samples).reshape(-1, dim), axis=1)
    stationary[dim] = dict(reduced=(r_law.mean(), r_law.std()), full=(w_law.mean(), w_law.std()),
                           gibbs=(g_law.mean(), g_law.std()), verdict=check.cause)
    print(f"d = {dim}: check_fixed_point on the full run: {check.cause} | mean, sd of the radius: reduced "
          f"{r_law.mean():.4f}, {r_law.std():.4f}; full particles {w_law.mean():.4f}, {w_law.std():.4f}; "
          f"MCMC draws of G[f_N] {g_law.mean():.4f}, {g_law.std():.4f} "
          f"(s.e. of the full particles' mean {w_law.std() / np.sqrt(len(w_law)):.4f}; {time.perf_counter() - started:.0f} s)")
    bins = np.linspace(0.0, max(r_law.max(), w_law.max()) * 1.05, 40)
    ax.hist(w_law, bins=bins, density=True, alpha=0.4, label="full: particles")
    ax.hist(g_law, bins=bins, density=True, histtype="step", color="C2", label="full: G[f_N] draws")
    ax.hist(r_law, bins=bins, density=True, histtype="step", color="k", label="reduced |r|")
    ax.set_title(f"d = {dim}: {check.cause}")
    ax.set_xlabel("‖w‖")
axes[0][0].legend(fontsize=7)
fig.tight_layout()
fig.savefig(OUT / "noisy_stationary.png", dpi=120)

# %% [markdown]
# The same reduction against noisy one-pass SGD (B = 1) from the same start, at the largest
# d. The SGD risk is shown without the N-unit network's own variance term
# E_x Var_i σ(x; w_i)/N, which the reduction (directions averaged out) does not have.

# %%
dim = DIMS[-1]
pop = mfsde.FreeEnergy.from_sampler(gm.make_unit(dim, KAPPA), gm.make_sampler(dim, DELTA), BETA, jax.random.key(46),
                                    num_eval=P_FULL)


def risk_without_variance_term(theta):
    return pop.risk(theta) - jnp.mean(jnp.var(pop.features(theta, pop.x), axis=0, ddof=1)) / theta.shape[0]


w0n = pop.prior_sample(jax.random.key(47), N_FULL)
eta_n, steps_n = (0.004, 100) if SMOKE else (0.0005, 20_000)
noisy = mfsde.sgd(pop, jax.random.key(48), w0n, num_steps=steps_n, step_size=eta_n, batch_size=1,
                  save_every=steps_n // 50, observables={"risk_mf": risk_without_variance_term}, progress=False)
red_noisy = gm.reduced_problem(DELTA, beta=BETA, dim=dim, init_scale=KAPPA)
rn = mfsde.langevin(red_noisy, jax.random.key(49), jnp.linalg.norm(w0n, axis=1, keepdims=True), t1=steps_n * eta_n,
                    dt0=eta_n, ts=np.asarray(noisy.ts), diagnostics=False, progress=False)
gap = np.abs(np.asarray(noisy.observables["risk_mf"]) - np.asarray(rn.observables["risk"]))
print(f"d = {dim}: noisy SGD vs the noisy reduction, largest risk gap {gap.max():.4f} "
      f"(mean {gap.mean():.4f}) over t ≤ {steps_n * eta_n:g}")
fig, ax = plt.subplots(figsize=(5.5, 3.4))
ax.plot(noisy.ts, noisy.observables["risk_mf"], ".", ms=3, label=f"noisy SGD, d = {dim}, N = {N_FULL}")
ax.plot(rn.ts, rn.observables["risk"], "k-", label="noisy reduction (Itô drift)")
ax.set_xlabel("t")
ax.set_ylabel("risk (variance term removed)")
ax.legend()
fig.tight_layout()
fig.savefig(OUT / "noisy_sgd.png", dpi=120)

# %% [markdown]
# ## 3. MMN's error bound, measured
# The theorem bounds sup_{t ≤ T} |(1/N) Σ_i f(θ_i^k) − ∫ f dρ_t| by about √(D/N) + √(Dε) for a
# bounded Lipschitz f. Here f(w) = ‖w‖, one-pass noiseless SGD (B = 1, step ε) on the
# d = 40 mixture against ρ_t of the exact finite-d reduction (Tsit5, 2·10⁴ quantile radii:
# its own error, from the 64 data radii per class, is ≈ 5·10⁻⁴ at t = 2), T = 2, the sup over
# 21 saves, averaged over 8 replicate runs per cell. A weighted least-squares fit of
# a N^-p + b ε^q gives the exponents; the χ² of the fits with (p, q) fixed at (½, ½), the
# bound's, and at (½, 1) say which rates the data support.

# %%
from scipy.optimize import least_squares  # noqa: E402
import diffrax  # noqa: E402

D_BOUND, T_BOUND, REPS = 40, (0.2 if SMOKE else 2.0), (2 if SMOKE else 8)
NS = (100, 400) if SMOKE else (100, 200, 400, 800, 1600, 3200)
EPSILONS = (1e-3, 2e-3) if SMOKE else (7.8125e-6, 3.125e-5, 1.25e-4, 2.5e-4)
ts_b = np.linspace(0.0, T_BOUND, 21)
fe_b = mfsde.FreeEnergy.from_sampler(gm.make_unit(D_BOUND), gm.make_sampler(D_BOUND, DELTA), float("inf"),
                                     jax.random.key(50), num_eval=2000)
mean_norm = {"mean_norm": lambda th: jnp.mean(jnp.linalg.norm(th, axis=1))}
ode = mfsde.langevin(gm.reduced_problem(DELTA, dim=D_BOUND), jax.random.key(51),
                     gm.quantile_radii(500 if SMOKE else 20_000, D_BOUND), t1=T_BOUND, dt0=0.01,
                     ts=ts_b, solver=diffrax.Tsit5(), stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-6),
                     diagnostics=False, observables={"mean_norm": lambda th: jnp.mean(jnp.abs(th[:, 0]))})
reference = np.asarray(ode.observables["mean_norm"])
gaps = np.zeros((len(EPSILONS), len(NS)))
ses = np.zeros_like(gaps)
for i, eps in enumerate(EPSILONS):
    for j, n in enumerate(NS):
        steps = round(T_BOUND / eps)
        starts = jax.vmap(lambda k: fe_b.prior_sample(k, n))(jax.random.split(jax.random.key(53 + j), REPS))
        run = mfsde.sgd(fe_b, jax.random.split(jax.random.key(60 + 10 * i + j), REPS), starts, num_steps=steps,
                        step_size=eps, batch_size=1, save_every=steps // 20, observables=mean_norm, progress=False)
        sup = np.abs(np.asarray(run.observables["mean_norm"]) - reference[None, :]).max(axis=1)
        gaps[i, j], ses[i, j] = sup.mean(), sup.std(ddof=1) / np.sqrt(REPS)

print("sup_t |mean ‖w‖ (SGD) − ∫‖w‖ dρ_t|, mean ± s.e. over", REPS, "runs")
print("| ε \\ N | " + " | ".join(str(n) for n in NS) + " |")
print("|---" * (len(NS) + 1) + "|")
for i, eps in enumerate(EPSILONS):
    print(f"| {eps:g} | " + " | ".join(f"{g:.4f} ± {s:.4f}" for g, s in zip(gaps[i], ses[i])) + " |")


def bound(params, n, eps):
    a, p, b, q = params
    return np.exp(a) * n ** (-p) + np.exp(b) * eps**q


nn, ee = np.meshgrid(NS, EPSILONS)
# log-space residuals weighted by each cell's relative s.e. (floored at 10%)
rel_se = np.maximum(ses / gaps, 0.1)


def fit_bound(free):
    def residual(th):
        p, q = (th[1], th[3]) if free is None else free
        return ((np.log(bound((th[0], p, th[2], q), nn, ee)) - np.log(gaps)) / rel_se).ravel()

    res = least_squares(residual, x0=[0.0, 0.5, 0.0, 0.5])
    return res, float(np.sum(res.fun**2))


(res, chi2_free), (_, chi2_half), (_, chi2_one) = fit_bound(None), fit_bound((0.5, 0.5)), fit_bound((0.5, 1.0))
fit = res.x
cov = np.linalg.pinv(res.jac.T @ res.jac) * chi2_free / max(gaps.size - 4, 1)
se_p, se_q = np.sqrt(np.diag(cov))[[1, 3]]
print(f"fit gap ≈ {np.exp(fit[0]):.3g} N^-{fit[1]:.2f} + {np.exp(fit[2]):.3g} ε^{fit[3]:.2f}: exponent of 1/N "
      f"{fit[1]:.2f} ± {se_p:.2f} (bound: 0.5), of ε {fit[3]:.2f} ± {se_q:.2f} (bound: 0.5)")
print(f"weighted χ² over {gaps.size} cells: free exponents {chi2_free:.1f}; fixed (½, ½) {chi2_half:.1f}; "
      f"fixed (½, 1) {chi2_one:.1f}")
fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
for i, eps in enumerate(EPSILONS):
    ax[0].errorbar(NS, gaps[i], ses[i], marker="o", label=f"ε = {eps:g}")
    ax[0].plot(NS, bound(fit, np.asarray(NS, float), eps), "k:", lw=0.8)
ax[0].set_xscale("log")
ax[0].set_yscale("log")
ax[0].set_xlabel("N")
ax[0].set_ylabel("sup_t gap in E‖w‖")
ax[0].legend(fontsize=7)
for j, n in enumerate(NS):
    ax[1].errorbar(EPSILONS, gaps[:, j], ses[:, j], marker="o", label=f"N = {n}")
ax[1].set_xscale("log")
ax[1].set_yscale("log")
ax[1].set_xlabel("ε")
ax[1].legend(fontsize=7)
fig.tight_layout()
fig.savefig(OUT / "error_bound.png", dpi=120)
