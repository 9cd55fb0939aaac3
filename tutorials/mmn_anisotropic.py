# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Mei–Montanari–Nguyen: anisotropic Gaussians and predicting failure
#
# Two experiments of the Mei talk beyond the isotropic mixture (`tutorials/mmn_isotropic.py`).
#
# 1. **Anisotropic Gaussians.** y = ±1, x | y ~ N(0, Σ_±), Σ_± = diag((1 ± Δ)² I_{s0}, I_{d−s0}):
#    only the first s0 coordinates carry the label. The problem is invariant under
#    O(s0) × O(d − s0), so the distributional dynamics reduce (d → ∞, s0/d = γ fixed) to the
#    two block norms (r₁, r₂) of w: a reduced unit on two reduced data points
#    (`models/gaussian_mixture.py`, `anisotropic_reduced_problem`), run with `mfsde.langevin`.
#    The talk's ReLU run: d = 320, s0 = 60, N = 800. The talk does not print Δ or the unit;
#    here Δ = 0.5 and σ(t) = max(t, 0) − 2: units σ(⟨w, x⟩) without output weights are ≥ 0
#    for the plain ReLU and cannot output y = −1. With the offset 2 the network fits
#    both classes exactly at r₁ = 2√(2π), r₂ = 0 (E relu(cG) = c/√(2π)).
# 2. **Predicting failure.** s0 = d = 320, N = 800, σ₊² = 1.5, σ₋² = 0.5, a non-monotone
#    activation, two initialisation scales κ (w ~ N(0, κ²/d I)). The one-dimensional
#    reduction predicts, before any SGD is run, which κ converges and which stalls at a bad
#    stationary point.
#
# Time is mfsde's: one SGD step of size η is time η. Set `MFSDE_SMOKE=1` for a tiny run.

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
OUT = pathlib.Path(os.environ.get("MFSDE_RUNS", "runs")) / "mmn_anisotropic"
OUT.mkdir(parents=True, exist_ok=True)
ROOT = pathlib.Path(mfsde.__file__).resolve().parents[1]
gm = mfsde.load_model(ROOT / "models" / "gaussian_mixture.py")

# %% [markdown]
# ## 1. Anisotropic Gaussians, ReLU units
# One-pass SGD (B = 1) at η = 2·10⁻⁴ (‖x‖² ≈ 60·1.5² + 260 ≈ 400, so η‖x‖² ≈ 0.08), and
# the (r₁, r₂) reduction on 10⁴ particles from the block norms of the same initialisation
# law, both to t = 40.

# %%
d, s0, N, N_RED = (40, 8, 200, 2000) if SMOKE else (320, 60, 800, 10_000)
DELTA, ETA, T = 0.5, (1e-3 if SMOKE else 2e-4), (4.0 if SMOKE else 40.0)
RELU = gm.PiecewiseLinear(-2.0, (1.0,), (0.0,))  # max(t, 0) − 2
SNAPSHOTS = np.array([0.0, 0.05, 0.25, 1.0]) * T

fe = mfsde.FreeEnergy.from_sampler(gm.make_unit(d, activation=RELU), gm.make_sampler(d, DELTA, s0), float("inf"),
                                   jax.random.key(0), num_eval=4000 if SMOKE else 8000)
red = gm.anisotropic_reduced_problem(DELTA, s0 / d, RELU)
w0 = fe.prior_sample(jax.random.key(1), N)
r0 = gm.init_block_radii(jax.random.key(2), N_RED, d, s0)


def block_norms(w):
    return np.stack([np.linalg.norm(w[:, :s0], axis=1), np.linalg.norm(w[:, s0:], axis=1)], axis=1)


sgd_ts, sgd_risk, red_ts, red_risk = [], [], [], []
clouds = {0.0: (block_norms(np.asarray(w0)), np.abs(np.asarray(r0)))}
w, r = w0, r0
started = time.perf_counter()
for i, (a, b) in enumerate(zip(SNAPSHOTS[:-1], SNAPSHOTS[1:])):
    steps = round((b - a) / ETA)
    tr = mfsde.sgd(fe, jax.random.key(10 + i), w, num_steps=steps, step_size=ETA, batch_size=1,
                   save_every=max(1, steps // 20), progress=False)
    rd = mfsde.langevin(red, jax.random.key(20 + i), r, t1=b - a, dt0=0.01, diagnostics=False, progress=False)
    w, r = tr.particles, rd.particles
    sgd_ts.append(a + np.asarray(tr.ts))
    sgd_risk.append(np.asarray(tr.observables["risk"]))
    red_ts.append(a + np.asarray(rd.ts))
    red_risk.append(np.asarray(rd.observables["risk"]))
    clouds[b] = (block_norms(np.asarray(w)), np.abs(np.asarray(r)))
    print(f"t = {b:5.1f}: SGD risk {sgd_risk[-1][-1]:.4f}, reduced {red_risk[-1][-1]:.4f}; mean (r1, r2): "
          f"SGD {clouds[b][0].mean(0).round(3)}, reduced {clouds[b][1].mean(0).round(3)}")
print(f"({time.perf_counter() - started:.0f} s)")

fig, ax = plt.subplots(1, 2, figsize=(11, 4))
ax[0].semilogy(np.concatenate(sgd_ts), np.concatenate(sgd_risk), ".", ms=3, label=f"SGD d={d}, s0={s0}, N={N}")
ax[0].semilogy(np.concatenate(red_ts), np.concatenate(red_risk), "k-", label="reduced (r₁, r₂), d → ∞")
ax[0].set_xlabel("t")
ax[0].set_ylabel("risk")
ax[0].legend()
for (t, (sgd_cloud, red_cloud)), colour in zip(clouds.items(), plt.cm.viridis(np.linspace(0, 0.9, len(clouds)))):
    ax[1].plot(red_cloud[:2000, 0], red_cloud[:2000, 1], ",", color=colour, alpha=0.5)
    ax[1].plot(sgd_cloud[:, 0], sgd_cloud[:, 1], "o", ms=2, mfc="none", color=colour, label=f"t = {t:g}")
ax[1].set_xlabel("r₁ = ‖w_{1..s0}‖")
ax[1].set_ylabel("r₂ = ‖w_{s0+1..d}‖")
ax[1].set_title("SGD units (circles), reduced particles (dots)")
ax[1].legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT / "anisotropic_relu.png", dpi=120)

# %% [markdown]
# ## 2. Predicting failure
# Classes of s.d. √1.5 and √0.5 on all d coordinates, so the isotropic reduction (one
# radius r) applies. The activation `gm.FAILURE_ACTIVATION` is the piecewise-linear function
# through (0, −0.5), (0.5, 0), (2, −9), (6.5, 12), constant outside: non-monotone (up, down,
# up). It was found by a search over such functions for one whose reduced risk
# R(r) = ½[(1 − v(√1.5 r))² + (1 + v(√0.5 r))²], v(c) = E σ(cG), has a bad local minimum
# that is stable for the mean-field dynamics (Ψ''(r) > 0 there, so a cloud of particles
# cannot escape it by spreading) beside the global one. Here is that risk, and the
# reduced dynamics from r ≈ κ for the two κ: the prediction.

# %%
act, scales = gm.FAILURE_ACTIVATION, gm.FAILURE_SCALES
red1 = gm.reduced_problem(scales, act)
d2, N2 = (40, 200) if SMOKE else (320, 800)
ETA2, T2 = (1e-3, 4.0) if SMOKE else (2e-4, 20.0)
KAPPAS = (0.4, 2.5)
grid = np.exp(np.linspace(np.log(0.05), np.log(10.0), 400))
landscape = np.asarray(jax.vmap(lambda g: red1.risk(jnp.full((1, 1), g)))(jnp.asarray(grid)))
predicted = {}
for kappa in KAPPAS:
    rd = mfsde.langevin(red1, jax.random.key(30), gm.init_radii(jax.random.key(31), N_RED, d2, kappa), t1=T2, dt0=0.01,
                        diagnostics=False, progress=False)
    predicted[kappa] = rd
    print(f"kappa = {kappa}: the reduction predicts risk {float(rd.observables['risk'][-1]):.4f} at t = {T2:g}, "
          f"mean r = {float(jnp.mean(jnp.abs(rd.particles))):.3f}")

# %% [markdown]
# Then SGD at d = 320, N = 800, for both κ.

# %%
outcome = {}
for kappa in KAPPAS:
    fe2 = mfsde.FreeEnergy.from_sampler(gm.make_unit(d2, kappa, act), gm.make_sampler(d2, scales), float("inf"),
                                        jax.random.key(32), num_eval=4000 if SMOKE else 8000)
    steps = round(T2 / ETA2)
    outcome[kappa] = mfsde.sgd(fe2, jax.random.key(33), fe2.prior_sample(jax.random.key(34), N2), num_steps=steps,
                               step_size=ETA2, batch_size=1, save_every=max(1, steps // 50), progress=False)
    print(f"kappa = {kappa}: SGD risk {float(outcome[kappa].observables['risk'][-1]):.4f} at t = {T2:g} "
          f"(predicted {float(predicted[kappa].observables['risk'][-1]):.4f}; SGD keeps the N = {N2} "
          f"network's variance term)")

fig, ax = plt.subplots(1, 3, figsize=(14, 3.8))
ax[0].loglog(grid, landscape, "k-")
for kappa in KAPPAS:
    ax[0].axvline(kappa, ls=":", color="C0" if kappa == KAPPAS[0] else "C1", label=f"κ = {kappa}")
ax[0].set_xlabel("r (all particles at r)")
ax[0].set_ylabel("reduced risk R(δ_r)")
ax[0].legend()
xs = np.linspace(-1.0, 8.0, 500)
ax[1].plot(xs, act(xs), "k-")
ax[1].set_xlabel("t")
ax[1].set_ylabel("σ(t)")
ax[1].set_title("the non-monotone activation")
for kappa, colour in zip(KAPPAS, ("C0", "C1")):
    ax[2].semilogy(predicted[kappa].ts, predicted[kappa].observables["risk"], "-", color=colour,
                   label=f"κ = {kappa}: reduced (predicted)")
    ax[2].semilogy(outcome[kappa].ts, outcome[kappa].observables["risk"], ".", ms=3, color=colour,
                   label=f"κ = {kappa}: SGD d = {d2}, N = {N2}")
ax[2].set_xlabel("t")
ax[2].set_ylabel("risk")
ax[2].legend(fontsize=7)
fig.tight_layout()
fig.savefig(OUT / "predicting_failure.png", dpi=120)
