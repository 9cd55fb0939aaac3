# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Why a fixed-point check passes or fails: the residual, measured part by part
#
# `check_fixed_point` asks whether a particle cloud is the stationary law of its own
# dynamics. Its reference is exact at every N: the N-particle Langevin system is a
# gradient system whose stationary law is the network posterior
#
#     p_N(Θ) ∝ Π_i π₀(θ_i) · exp(−β N · ½ R(f_N(Θ)))
#
# (`mfsde.sample_particle_posterior` samples it). A cloud can miss p_N for four reasons,
# each measured here on the demo's model (planted tanh neuron, `models/single_neuron.py`):
#
# 1. **time-step bias**: the discrete chain's invariant law is not p_N. Measured by the
#    Stein configurational temperature (`mfsde.stein_residual`, exactly 1 under p_N) of
#    stationary runs at several dt0: its excess falls like dt0 for Euler–Maruyama, and
#    Leimkuhler–Matthews's O(dt0²) excess is below the measurement's resolution here;
# 2. **finite N**: p_N is not ρ*. The exact finite-N residual of the check and the plain
#    mean-field one (against G[f_N]) differ by the O(β/N) self-interaction term, measured
#    at several N;
# 3. **non-stationarity**: the run has not reached p_N. The output weights relax at about the
#    prior's rate 1/(β s_a²) (Ψ is linear in a); measured by the snapshot z of the check and
#    the slowest observable's integrated autocorrelation time as t1 grows;
# 4. **the check's own Monte Carlo error**: the share of the residual's variance that more
#    MCMC draws would remove.
#
# `MFSDE_SMOKE=1` runs tiny sizes (the test suite does).

# %%
import os
import pathlib

import diffrax
import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import mfsde  # noqa: E402

SMOKE = os.environ.get("MFSDE_SMOKE", "") not in ("", "0")
OUT = pathlib.Path(os.environ.get("MFSDE_RUNS", "runs")) / "validation"
OUT.mkdir(parents=True, exist_ok=True)
ROOT = pathlib.Path(globals().get("__file__", "tutorials/validation.py")).resolve().parents[1]
neuron = mfsde.load_model(ROOT / "models" / "single_neuron.py")
cfg = dict(neuron.DEFAULTS)
if SMOKE:
    cfg.update(dim=3, num_data=64, num_particles=32, beta=20.0, t1=40.0, replicates=2)
MCMC = dict(num_warmup=60, num_samples=60) if SMOKE else dict(num_warmup=400, num_samples=500)
x, y = neuron.make_data(jax.random.key(0), num_data=cfg["num_data"], dim=cfg["dim"])
fe = mfsde.FreeEnergy(neuron.make_unit(cfg["prior_scale_a"], cfg["prior_scale_w"]), x, y, beta=cfg["beta"])
N, R, DT = cfg["num_particles"], cfg["replicates"], cfg["dt0"]
print(f"planted neuron d={cfg['dim']} (D={fe.dim}), P={cfg['num_data']}, N={N}, beta={cfg['beta']:g}, {R} runs, "
      f"Leimkuhler-Matthews dt0={DT}")

# %% [markdown]
# ## 3. Non-stationarity: the run continued segment by segment
# From overdispersed starts, the same run is continued to t1 = T/256, T/64, …, T; at each
# t1 the check's snapshot statistic of run 0 (max |z| over its test functions, against the
# Bonferroni limit) and the convergence verdict on the run so far.

# %%
T = cfg["t1"]
bounds = T * (np.array([1 / 2, 1.0]) if SMOKE else np.array([1 / 256, 1 / 64, 1 / 16, 1 / 4, 1.0]))
particles = mfsde.overdispersed_starts(fe, jax.random.key(1), R, N, spread=cfg["start_spread"])
segments, rows_t = [], []
t0 = 0.0
for k, t1 in enumerate(bounds):
    seg = mfsde.langevin(fe, jax.random.split(jax.random.key(10 + k), R), particles, t0=t0, t1=float(t1), dt0=DT,
                         ts=np.linspace(t0, t1, 26), progress=False, diagnostics=True)
    segments.append(seg)
    particles, t0 = seg.particles, float(t1)
    so_far = seg._replace(
        ts=jnp.concatenate([s.ts[(i > 0):] for i, s in enumerate(segments)]),
        observables={name: jnp.concatenate([s.observables[name][:, (i > 0):] for i, s in enumerate(segments)], axis=1)
                     for name in seg.observables},
        # the run so far starts at 0, from the first segment's (overdispersed) starts
        run=seg.run.replace(t0=0.0, starts=segments[0].run.starts, start_dispersion=segments[0].run.start_dispersion))
    # the last one with the full diagnosis: the verdict on the whole run
    last = k == len(bounds) - 1
    check = mfsde.check_fixed_point(fe, jax.random.key(100 + k), so_far, diagnose=last, **MCMC)
    conv = check.convergence
    slow = {v.name: v for v in conv.observables}[conv.slowest]
    rows_t.append((float(t1), check.test.statistic, check.test.dof, check.cause, conv.slowest, slow.iat))
    print(f"t1 = {t1:7.1f}: snapshot max|z| = {check.test.statistic:5.2f}; verdict {check.cause!r}; slowest "
          f"observable {conv.slowest} (IAT {slow.iat:.3g})")
stationary = particles
full, final = so_far, check

# %% [markdown]
# ## 1. Time-step bias: the Stein temperature of stationary runs at several dt0
# From the stationary clouds above, each integrator runs for a stretch at each dt0; the
# time-averaged Stein residual (second half, all runs) gives the temperature excess
# T − 1 along the data's directions with its standard error. The save times sit on each
# run's steps (`langevin` moves them there): a state interpolated between two steps carries
# less than a step's noise and would read cooler than the chain, by an amount that depends
# on how the save grid falls on the step grid.

# %%
span = 10.0 if SMOKE else 600.0
# up to dt0 λ_max ≈ 1.9 (stability ends at 2): the bias must stand out of the noise
dts = np.array([0.85, 0.7, 0.5, 0.35, 0.25, 0.125]) if not SMOKE else np.array([0.2, 0.1])
lam = float(mfsde.max_curvature(fe, stationary[0]))
excess = {"Euler": [], "Leimkuhler-Matthews": []}
for name, solver in (("Euler", diffrax.Euler()), ("Leimkuhler-Matthews", mfsde.LeimkuhlerMatthews())):
    for i, h in enumerate(dts):
        if name == "Euler" and h * lam > 1.6:
            excess[name].append((np.nan, np.nan))  # near Euler's stability edge the chain is far off
            continue
        run = mfsde.langevin(fe, jax.random.split(jax.random.key(200 + i), R), stationary, t0=T, t1=T + span,
                             dt0=float(h), solver=solver, ts=np.linspace(T, T + span, 26 if SMOKE else 201), progress=False,
                             diagnostics=True)
        st = mfsde.stein_test(run)
        excess[name].append((st.temperature - 1.0, st.se / max(abs(st.mean), 1e-300) * abs(st.temperature - 1.0)))
        print(f"{name:20s} dt0 = {h:5.3f} (dt0 lambda_max = {h * lam:.2f}): temperature - 1 = "
              f"{st.temperature - 1:+.4f} +- {excess[name][-1][1]:.4f} (z = {st.z:+.1f})")


def slope(h, e):
    # fitted where the excess stands out of its noise (> 3 s.e.) and dt0·λ_max < 1, where
    # the leading order dominates (Euler's OU excess hλ/(2 − hλ) is far from linear near 2)
    e = np.asarray(e)
    ok = (e[:, 0] > 3 * e[:, 1]) & (h * lam < 1.0)
    return float(np.polyfit(np.log(h[ok]), np.log(e[ok, 0]), 1)[0]) if ok.sum() >= 2 else float("nan")


slopes = {k: slope(dts, v) for k, v in excess.items()}
lm = np.asarray(excess["Leimkuhler-Matthews"])
lm_bound = float(np.nanmax(np.abs(lm[:, 0]) + 2 * lm[:, 1]))
print("log-log slopes of the temperature excess vs dt0 (dt0 lambda_max < 1, excess > 3 s.e.):",
      {k: round(v, 2) for k, v in slopes.items()})
REF = int(np.argmin(np.abs(dts - 0.5)))  # the row the table quotes
print(f"Leimkuhler-Matthews: |T - 1| <= {lm_bound:.3f} (2 s.e.) at every dt0 up to {dts.max():g}"
      + ("" if np.isfinite(slopes["Leimkuhler-Matthews"]) else ": its O(dt0^2) bias is below this resolution")
      + f"; Euler's excess at dt0 = {dts[REF]:g} is {excess['Euler'][REF][0]:+.3f}")

# %% [markdown]
# ## 2. Finite N: the self-interaction term against N
# At each N, a cloud relaxed at that N (a subsample of the stationary cloud, run for a
# stretch at that N) is checked. The exact residual r uses the finite-N conditional laws;
# the plain one r_mf compares with G[f_N] as if N were infinite. Their difference,
# E_mix[h] − E_G[h], is the O(β/N) bias of the mean-field reading of the check.

# %%
ns = [N // 8, N // 4, N // 2, N] if not SMOKE else [N // 4, N]
relax = 10.0 if SMOKE else 300.0
rows_n = []
for j, n in enumerate(ns):
    cloud = stationary[0, :n]
    cloud = mfsde.langevin(fe, jax.random.key(300 + j), cloud, t0=0.0, t1=relax, dt0=DT, progress=False,
                           diagnostics=False).particles
    sc = mfsde.check_fixed_point(fe, jax.random.key(400 + j), cloud, diagnose=False, **MCMC).test
    bias = np.abs(sc.mean_field_z - sc.z)  # in units of the residual's sd at this N
    j_max = int(np.argmax(bias))
    rows_n.append((n, sc.statistic, sc.mean_field_statistic, float(bias[j_max]), float(bias[j_max] * sc.sd[j_max])))
    print(f"N = {n:5d}: exact max|z| = {sc.statistic:5.2f}, mean-field max|z| = {sc.mean_field_statistic:5.2f}, "
          f"self-interaction term up to {np.max(bias):.2f} sd")
# In units of the check's null sd: the term is O(β/N) while that sd is
# sqrt(O(1/N) + Monte Carlo error), so the slope lies between -1/2 (sd dominated by the
# particles' own fluctuation) and -1 (by the draws' Monte Carlo error).
bias_n = np.array([r[3] for r in rows_n])
slope_n = float(np.polyfit(np.log(ns), np.log(bias_n), 1)[0])
print(f"log-log slope of the self-interaction term (in the check's sd) vs N: {slope_n:.2f} (theory -1/2 .. -1)")

# %% [markdown]
# ## 4. The check's own Monte Carlo error
# At the final cloud of run 0: the share of the residual's variance that is Monte Carlo
# error of the MCMC draws, at the default draws (the whole-run check above) and at 4x fewer.

# %%
rows_mc = []
fewer = mfsde.check_fixed_point(fe, jax.random.key(500), stationary[0], diagnose=False,
                                num_warmup=MCMC["num_warmup"], num_samples=MCMC["num_samples"] // 4).test
for draws, sc in ((MCMC["num_samples"] // 4, fewer), (MCMC["num_samples"], final.test)):
    rows_mc.append((draws, sc.statistic, float(np.max(sc.mc_fraction)), float(np.median(sc.mc_fraction))))
    print(f"{draws:5d} draws/chain: max|z| = {sc.statistic:5.2f}; Monte Carlo share of Var(r): max "
          f"{np.max(sc.mc_fraction):.2f}, median {np.median(sc.mc_fraction):.2f}")

# %% [markdown]
# ## The table

# %%
print(f"{'part':22s} {'measured':60s}")
print(f"{'time step':22s} temperature excess at dt0 = {dts[REF]:g}: Euler {excess['Euler'][REF][0]:+.4f}, "
      f"LM {excess['Leimkuhler-Matthews'][REF][0]:+.4f}; Euler slope {slopes['Euler']:.2f}, LM |T - 1| <= "
      f"{lm_bound:.3f} up to dt0 = {dts.max():g}")
print(f"{'finite N':22s} self-interaction term {rows_n[0][3]:.2f} sd at N = {ns[0]} -> {rows_n[-1][3]:.2f} sd at "
      f"N = {ns[-1]}; slope vs N {slope_n:.2f}")
print(f"{'non-stationarity':22s} snapshot max|z| {rows_t[0][1]:.2f} at t1 = {rows_t[0][0]:g} -> {rows_t[-1][1]:.2f} "
      f"at t1 = {rows_t[-1][0]:g}; slowest observable {rows_t[-1][4]} IAT {rows_t[-1][5]:.3g}")
print(f"{'Monte Carlo':22s} share of Var(r) at {rows_mc[-1][0]} draws/chain: max {rows_mc[-1][2]:.2f}")
print(f"check_fixed_point of the whole run: {final.cause}: {final.reason}")

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
ax = axes[0]
for name, marker in (("Euler", "o"), ("Leimkuhler-Matthews", "s")):
    e = np.asarray(excess[name])
    label = f"{name} (slope {slopes[name]:.2f})" if np.isfinite(slopes[name]) else f"{name} (within noise)"
    ax.errorbar(dts, np.abs(e[:, 0]), yerr=e[:, 1], fmt=marker + "-", label=label)
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("dt0")
ax.set_ylabel("|configurational temperature − 1|")
ax.set_title("time-step bias")
ax.legend(fontsize=8)
ax = axes[1]
ax.loglog(ns, bias_n, "o-", label=f"slope {slope_n:.2f}")
ax.loglog(ns, bias_n[-1] * ns[-1] / np.asarray(ns), "k--", lw=0.8, label="1/N")
ax.set_xlabel("N")
ax.set_ylabel("self-interaction term / null sd (largest)")
ax.set_title("finite N")
ax.legend(fontsize=8)
ax = axes[2]
tt = np.array([r[0] for r in rows_t])
ax.semilogx(tt, [r[1] for r in rows_t], "o-", label="snapshot max |z|")
ax.axhline(float(-jax.scipy.special.ndtri(0.005 / rows_t[0][2])), color="k", ls="--", lw=0.8, label="limit")
ax.set_xlabel("t1")
ax.set_ylabel("max |z|")
ax.set_title("non-stationarity")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT / "residual_parts.png", dpi=120)

fig, ax = plt.subplots(figsize=(6, 3.6))
obs = full.observables
for name in ("mean_sq[a]", "mean[a]", "risk"):
    v = np.asarray(obs[name])
    ax.plot(np.asarray(full.ts), (v.mean(0) - v.mean(0)[-1]) / (np.std(v) + 1e-300), label=name)
ax.set_xlabel("t")
ax.set_ylabel("standardised (mean over runs)")
ax.set_title("risk settles long before the output weights' moments")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT / "slow_observables.png", dpi=120)
