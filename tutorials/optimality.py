# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # How far from the optimum is my run? The entropy sandwich
#
# For any law ρ, with the proximal Gibbs measure G[ρ] ∝ π₀ exp(−βΨ(·; ρ))
# (Nitanda–Wu–Suzuki 2022),
#
#     β⁻¹ KL(ρ‖ρ*) ≤ F(ρ) − F(ρ*) ≤ β⁻¹ KL(ρ‖G[ρ]),
#
# and the right-hand side needs no ρ*: `mfsde.optimality_certificate` estimates it from the
# k-NN entropy of the particles, Ψ at them and log Z[ρ] by tempered SMC. Along a
# mean-field Langevin run F(ρ_t) − F(ρ*) ≤ e^{−2αt/β}(F(ρ_0) − F(ρ*)) when every G[ρ]
# satisfies a log-Sobolev inequality with constant α.
#
# Here the linear unit (docs/design.md §5), where everything is known: G[ρ] = N(·, s²I)
# has α = 1/s² exactly, the law stays N(m_t, s²I) from the prior and its mean relaxes with
# the matrix Σ̂ + I/(βs²), so the gap decays at rates 2λ_i(Σ̂ + I/(βs²)), at least the
# log-Sobolev rate 2/(βs²). (On the planted neuron at a β where the gap is visible,
# Bakry–Émery's constant 1/σ²_max + βκ_min is negative: the theory gives no rate there.)
# Set `MFSDE_SMOKE=1` for a tiny run.

# %%
import os
import pathlib

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import mfsde  # noqa: E402

SMOKE = os.environ.get("MFSDE_SMOKE", "") not in ("", "0")
OUT = pathlib.Path(os.environ.get("MFSDE_RUNS", "runs")) / "optimality"
OUT.mkdir(parents=True, exist_ok=True)
lg = mfsde.load_model("linear_gaussian")
N, SEGMENTS, SMC = (1000, 6, 500) if SMOKE else (4000, 10, 2000)
BETA, T_SEG, DT = 4.0, 0.2, 0.02

x, y = lg.make_data(jax.random.key(0), 256, 3)
fe = mfsde.FreeEnergy(lg.unit, x, y, BETA)
sigma, c = (np.asarray(a) for a in lg.moments(x, y))
m_star = np.asarray(lg.fixed_point_mean(x, y, BETA))
a_mat = np.eye(3) + BETA * sigma

# %% [markdown]
# ## The certificate along a run from the prior
# The run is cut into segments, each continuing the last from its particles (the same
# compiled program: only t0's value changes); the particles are certified at each cut and
# compared with the closed forms at their own sample mean.

# %%
particles = fe.prior_sample(jax.random.key(1), N)
means = [np.asarray(particles.mean(0))]
times, certs = [0.0], [mfsde.optimality_certificate(fe, jax.random.key(2), particles, num_smc_particles=SMC)]
for k in range(SEGMENTS):
    run = mfsde.langevin(fe, jax.random.key(10 + k), particles, t0=k * T_SEG, t1=(k + 1) * T_SEG, dt0=DT,
                         progress=False)
    particles = run.particles
    times.append((k + 1) * T_SEG)
    means.append(np.asarray(particles.mean(0)))
    certs.append(mfsde.optimality_certificate(fe, jax.random.key(20 + k), particles, num_smc_particles=SMC))
times = np.array(times)
upper = np.array([cert.upper_bound for cert in certs])
se = np.array([cert.se for cert in certs])
# the closed forms at each cloud's mean m̂ (δ = m̂ − m*; its covariance stays s²I)
deltas = [m - m_star for m in means]
closed_upper = [(a_mat @ d) @ (a_mat @ d) / (2 * BETA) for d in deltas]
closed_gap = [d @ a_mat @ d / (2 * BETA) for d in deltas]
for t, cert, cu, cg in zip(times, certs, closed_upper, closed_gap):
    print(f"t = {t:4.2f}: {cert}; closed form: bound {cu:.4g}, gap F(rho) - F(rho*) {cg:.4g}")

ok = upper > 3 * se
rate = -np.polyfit(times[ok], np.log(upper[ok]), 1)[0]
lsi = 2.0 / BETA  # s = 1
slowest = 2 * np.linalg.eigvalsh(sigma + np.eye(3) / BETA).min()
print(f"fitted decay rate of the certificate: {rate:.3f}; the log-Sobolev rate 2/(beta s^2) = {lsi:.3f} "
      f"(a guarantee), the exact slowest mode 2 lambda_min(Sigma + I/(beta s^2)) = {slowest:.3f}")

fig, ax = plt.subplots(figsize=(5.8, 3.9))
ax.errorbar(times, upper, yerr=se, fmt="o", label="certificate β⁻¹KL(ρ_t‖G[ρ_t])")
ax.plot(times, closed_upper, "s", mfc="none", label="its closed form")
ax.plot(times, closed_gap, "^", mfc="none", label="F(ρ_t) − F(ρ*) (closed form)")
ax.plot(times, upper[0] * np.exp(-rate * times), "k-", label=f"fit: rate {rate:.2f}")
ax.plot(times, upper[0] * np.exp(-lsi * times), "k--", label=f"log-Sobolev: rate {lsi:.2f}")
ax.set_yscale("log")
ax.set_xlabel("t")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT / "certificate_decay.png", dpi=120)
