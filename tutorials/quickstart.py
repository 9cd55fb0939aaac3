# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # mfsde quickstart
#
# One hidden unit as a numpyro model → the free energy F_β(ρ) = ½R(ρ) + β⁻¹KL(ρ‖π₀) →
# the mean-field Langevin SDE → the self-consistent Gibbs fixed point ρ* sampled with
# BlackJAX → ArviZ diagnostics. Set `MFSDE_SMOKE=1` for a tiny run (the test suite does).

# %%
import os
import pathlib

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402

import mfsde  # noqa: E402

SMOKE = os.environ.get("MFSDE_SMOKE", "") not in ("", "0")
OUT = pathlib.Path(os.environ.get("MFSDE_RUNS", "runs")) / "quickstart"
OUT.mkdir(parents=True, exist_ok=True)
d, P, N = (3, 32, 64) if SMOKE else (8, 512, 1024)
T1, DT = (4.0, 0.1) if SMOKE else (60.0, 0.05)
WARMUP, DRAWS = (100, 100) if SMOKE else (500, 500)


# %% [markdown]
# ## 1. A unit model
# A unit a·tanh(⟨w, x⟩) with Gaussian priors. Its sample sites are the unit's parameters;
# it returns σ(x; θ) for a batch of inputs. (`x @ w`, `w @ x.T` or an einsum: mfsde rewrites
# the contraction at trace time so that every form runs the same particle-first program.)

# %%
def unit(x):
    a = numpyro.sample("a", dist.Normal(0.0, 1.0))
    w = numpyro.sample("w", dist.Normal(0.0, 1.0 / jnp.sqrt(x.shape[-1])).expand([x.shape[-1]]).to_event(1))
    return a * jnp.tanh(x @ w)


kx, kw = jax.random.split(jax.random.key(0))
x = jax.random.normal(kx, (P, d))
w_star = jax.random.normal(kw, (d,))
y = jnp.tanh(x @ (w_star / jnp.linalg.norm(w_star)))
fe = mfsde.FreeEnergy(unit, x, y, beta=20.0)
print("D =", fe.dim, "sites:", fe.unit.site_names)

# %% [markdown]
# ## 2. Mean-field Langevin dynamics, three replicate runs
# From overdispersed starts (prior draws scaled by 1/2, 1 and 2), so that R-hat across the
# runs can see a drift they would otherwise share. The default integrator at finite β is
# Leimkuhler–Matthews (stationary law accurate to O(dt²), one drift evaluation a step).
# `summary` judges convergence on the slowest of the saved observables.

# %%
keys = jax.random.split(jax.random.key(1), 3)
particles0 = mfsde.overdispersed_starts(fe, jax.random.key(2), 3, N)
# diagnostics at every save (not the default 10% budget): check_fixed_point's time-step
# test below reads the Stein residual's time series
traj = mfsde.langevin(fe, keys, particles0, t1=T1, dt0=DT, diagnostics=True)
idata = mfsde.to_inference_data(traj, fe)
summary = mfsde.summary(idata, fe)
print(summary)
mfsde.save(idata, OUT / "langevin.nc")
mfsde.plot_observables(idata, path=OUT / "observables.png")

# %% [markdown]
# ## 3. The fixed point ρ* = G[ρ*] by MCMC, and a check of the SDE's particles

# %%
# Newton from f_0 = f_ρ of the Langevin cloud (its replicates pooled): near ρ* already, so
# fewer MCMC rounds than from f_0 = 0
fp = mfsde.sample_fixed_point(fe, jax.random.key(3), num_chains=4, num_warmup=WARMUP, num_samples=DRAWS,
                              start=traj)
print("Newton rounds:", len(fp.residuals), "relative residuals:", np.round(fp.residuals, 4), "converged:", fp.converged)
fp_idata = mfsde.to_inference_data(fp, fe)
print(mfsde.summary(fp_idata).table)
# check_fixed_point on the whole trajectory: the snapshot self-consistency of run 0's
# particles (exact at finite N), the Stein configurational temperature of all runs, and the
# convergence verdict; when it fails it names the cause.
check = mfsde.check_fixed_point(fe, jax.random.key(4), traj, num_warmup=WARMUP, num_samples=DRAWS)
print("check_fixed_point:", check.cause, "-", check.reason)

# %% [markdown]
# ## 4. The two laws side by side

# %%
langevin_a = np.asarray(idata["posterior"]["a"]).reshape(-1)
mcmc_a = np.asarray(fp_idata["posterior"]["a"]).reshape(-1)
fig, ax = plt.subplots(figsize=(5, 3.5))
bins = np.histogram_bin_edges(np.r_[langevin_a, mcmc_a], 40)
ax.hist(langevin_a, bins=bins, density=True, alpha=0.6, label="Langevin particles")
ax.hist(mcmc_a, bins=bins, density=True, alpha=0.6, label="MCMC draws of ρ*")
ax.set_xlabel("a")
ax.legend()
fig.tight_layout()
fig.savefig(OUT / "fixed_point_vs_langevin.png", dpi=110)
mfsde.plot_marginals(fp_idata, fe, path=OUT / "marginals.png")
# KL(ρ*‖π₀) two ways: SMC's log Z with the MCMC draws, and k-NN on the Langevin particles
# (k-NN needs distinct points: MCMC draws repeat states on rejections).
smc = mfsde.gibbs_log_normalizer(fe, jax.random.key(5), fp.output, samples=fp.samples)
print("KL(ρ*‖π₀): SMC", round(smc.kl, 4), "| k-NN on the Langevin particles",
      round(float(mfsde.kl_to_prior(traj.particles[0], fe)), 4))
print("wrote", OUT)
