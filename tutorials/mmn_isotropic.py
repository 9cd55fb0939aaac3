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
# Then noisy SGD reaches the Boltzmann fixed point, checked with `check_fixed_point`.
# Set `MFSDE_SMOKE=1` for a tiny run.

# %%
import os
import pathlib

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
DELTA, ETA = 0.8, (0.005 if SMOKE else 0.001)
CHECKPOINTS = (0.0, 1.0, 4.0) if SMOKE else (0.0, 2.0, 10.0, 40.0)

# %% [markdown]
# ## 1. SGD and the reduced dynamics

# %%
fe = mfsde.FreeEnergy.from_sampler(gm.make_unit(d), gm.make_sampler(d, DELTA), float("inf"), jax.random.key(0),
                                   num_eval=4000)
red = gm.reduced_problem(DELTA)
w = fe.prior_sample(jax.random.key(1), N)
r = gm.init_radii(jax.random.key(2), N_RED, d)
ts_sgd, risk_sgd, ts_red, risk_red, norms = [], [], [], [], {0.0: (np.linalg.norm(w, axis=1), np.asarray(r[:, 0]))}
for i, (a, b) in enumerate(zip(CHECKPOINTS[:-1], CHECKPOINTS[1:])):
    steps = round((b - a) / ETA)
    tr = mfsde.sgd(fe, jax.random.key(10 + i), w, num_steps=steps, step_size=ETA, batch_size=1, save_every=max(1, steps // 20),
                   progress=False)
    rd = mfsde.langevin(red, jax.random.key(20 + i), r, t1=b - a, dt0=0.01, diagnostics=False)
    w, r = tr.particles, rd.particles
    ts_sgd.append(a + np.asarray(tr.ts))
    risk_sgd.append(np.asarray(tr.observables["risk"]))
    ts_red.append(a + np.asarray(rd.ts))
    risk_red.append(np.asarray(rd.observables["risk"]))
    norms[b] = (np.linalg.norm(w, axis=1), np.asarray(r[:, 0]))
    print(f"t={b:5.1f}: SGD risk {risk_sgd[-1][-1]:.4f}, reduced {risk_red[-1][-1]:.4f}")

fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
ax[0].plot(np.concatenate(ts_sgd), np.concatenate(risk_sgd), ".", ms=3, label=f"SGD d={d}, N={N}")
ax[0].plot(np.concatenate(ts_red), np.concatenate(risk_red), "k-", label="reduced (d → ∞)")
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
# ## 2. Noisy SGD and the Boltzmann fixed point
# With noise, θ ← θ + η[−∇̂Ψ − λθ] + sqrt(2η/β) g on a fixed sample (prior
# N(0, (λβ)⁻¹I) = the initialisation law, so λ = d/(0.8² β)), the particles relax to
# ρ* ∝ π₀ exp(−βΨ(·; ρ*)); `check_fixed_point` samples G[f_particles] with NUTS and compares.

# %%
d2, n2, beta = (4, 100, 10.0) if SMOKE else (10, 400, 20.0)
x2, y2 = gm.make_sampler(d2, DELTA)(jax.random.key(3), 500 if SMOKE else 2000)
fe2 = mfsde.FreeEnergy(gm.make_unit(d2), x2, y2, beta)
# The step must be small for the discrete chain's stationary law to be the N-particle
# Gibbs law: check_fixed_point on the SGD trajectory tests it with the Stein
# configurational temperature of the minibatch chain (bench/README.md has the figures).
noisy = mfsde.sgd(fe2, jax.random.key(4), fe2.prior_sample(jax.random.key(5), n2), num_steps=300 if SMOKE else 60000,
                  step_size=0.01 if SMOKE else 0.0005, batch_size=100)
check = mfsde.check_fixed_point(fe2, jax.random.key(6), noisy,
                                num_warmup=60 if SMOKE else 400, num_samples=60 if SMOKE else 500)
print("noisy SGD: risk", float(noisy.observables["risk"][-1]), "| fixed point check:",
      check.cause, "-", check.reason)
fig, ax = plt.subplots(figsize=(5, 3.4))
ax.plot(noisy.ts, noisy.observables["risk"])
ax.set_xlabel("t")
ax.set_ylabel("risk (noisy SGD)")
fig.tight_layout()
fig.savefig(OUT / "noisy_sgd.png", dpi=120)
