# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Rotskoff–Vanden-Eijnden: the 1/n law, neuron birth–death and the 3-spin target
#
# Units c·h(a·x + b) (h the logistic sigmoid) learn the spherical 3-spin function
# f(x) = (1/d) Σ a_pqr x_p x_q x_r on the sphere of radius √d (`models/three_spin.py`).
# Gradient flow of n units is a particle discretisation of the Wasserstein gradient flow of
# ½R; with the mass allowed to move (`mfsde.wfr`: Wasserstein–Fisher–Rao, with
# reweighting or birth–death at rate α) the flow escapes the plateaus transport alone sits
# on. The talk's claims, measured here:
#
# 1. the loss after training falls like 1/n (a log-log slope of −1);
# 2. moving mass reaches a given loss sooner than gradient flow, at the same n and cost
#    per step (bench/wfr.py: a step costs what a gradient step costs);
# 3. increasing the batch size late in SGD ("quench") removes the noise floor;
# 4. a ReLU student of a ReLU teacher on the sphere generalises like P^(−1/2);
# 5. Rotskoff's 1-D Gaussian-bump notebook: from a bad start gradient flow stalls and
#    birth–death with re-injection recovers.
#
# Set `MFSDE_SMOKE=1` for a tiny run.

# %%
import math
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
OUT = pathlib.Path(os.environ.get("MFSDE_RUNS", "runs")) / "rotskoff_vanden_eijnden"
OUT.mkdir(parents=True, exist_ok=True)
ROOT = pathlib.Path(mfsde.__file__).resolve().parents[1]
spin = mfsde.load_model(ROOT / "models" / "three_spin.py")
bumps = mfsde.load_model(ROOT / "models" / "gaussian_bumps.py")
D = 10 if SMOKE else 25
NS = [16, 32] if SMOKE else [16, 32, 64, 128, 256, 512, 1024]
T_GF, DT_GF = (2.0, 1.0) if SMOKE else (4000.0, 1.0)
N_CMP, T1, DT0 = (32, 2.0, 0.25) if SMOKE else (256, 2000.0, 0.25)
NUM_EVAL = 512 if SMOKE else 8192

# %% [markdown]
# ## 1. Loss against n
#
# The 1/n law is a statement about the end of training: the loss of n units at the
# gradient flow's limit. Gradient flow (dt0 = 1, stable for it here) to t = T_GF; the risk
# on the training sample and the loss on a fresh test sample against n, with the fitted
# log-log slope. At large n the flow takes longer to settle, so a run that is stopped too
# early flattens the slope; the printed risk at T_GF/2 shows how far each n still moves.

# %%
sampler = spin.make_sampler(D)
fe = mfsde.FreeEnergy.from_sampler(spin.make_unit(D), sampler, math.inf, jax.random.key(0), num_eval=NUM_EVAL)
x_test, y_test = sampler(jax.random.key(99), NUM_EVAL)
ALPHA = 0.05


def test_loss(mu):
    return float(jnp.mean((fe.output(mu, x_test) - y_test) ** 2))


risks, losses, halfway = [], [], []
for n in NS:
    gf = mfsde.wfr(fe, jax.random.key(1), fe.prior_sample(jax.random.key(n), n), t1=T_GF, dt0=DT_GF, alpha=0.0,
                   ts=[0.5 * T_GF, T_GF], diagnostics=False, progress=False)
    halfway.append(float(gf.observables["risk"][0]))
    risks.append(float(gf.observables["risk"][-1]))
    losses.append(test_loss(gf.particles))
slope = np.polyfit(np.log(NS), np.log(risks), 1)[0]
slope_test = np.polyfit(np.log(NS), np.log(losses), 1)[0]
fig, ax = plt.subplots(figsize=(5, 4))
ax.loglog(NS, risks, "o-", label=f"risk at t = {T_GF:g} (slope {slope:+.2f})")
ax.loglog(NS, halfway, "s:", label=f"risk at t = {0.5 * T_GF:g}")
ax.loglog(NS, losses, "x--", label=f"test loss (slope {slope_test:+.2f})")
ax.loglog(NS, risks[0] * NS[0] / np.asarray(NS, float), "k--", label="1/n")
ax.set_xlabel("n")
ax.set_ylabel("loss after gradient flow")
ax.legend(fontsize=7)
fig.savefig(OUT / "loss_vs_n.png", dpi=120)
print(f"d = {D}, gradient flow to t = {T_GF:g}: risk {np.round(risks, 5).tolist()} (at t/2: "
      f"{np.round(halfway, 5).tolist()}), test loss {np.round(losses, 5).tolist()}; "
      f"slope {slope:+.3f} (test {slope_test:+.3f}) against the predicted -1")

# %% [markdown]
# ## 2. Gradient flow against reweighting and birth–death at the same n
#
# n = N_CMP units, the same steps (dt0 = 0.25: a cluster of clones, or a heavy particle, is
# stiffer than a single unit, and dt0 = 1 is not stable once mass concentrates) and the same
# cost per step (bench/wfr.py): gradient flow (α = 0), reweighting (α = 0.05) and clone
# birth–death for 3/4 of the time followed by gradient flow (the notebook's quench: at
# finite n the jumps keep injecting O(1/n) noise into f, a floor that only stopping them
# removes). The time each takes to reach the gradient flow's risk at T1/4.

# %%
def run(name, p0):
    if name == "gradient flow":
        return mfsde.wfr(fe, jax.random.key(1), p0, t1=T1, dt0=DT0, alpha=0.0, diagnostics=False, progress=False)
    if name == "reweighting":
        return mfsde.wfr(fe, jax.random.key(1), p0, t1=T1, dt0=DT0, alpha=ALPHA, diagnostics=False, progress=False)
    t_bd = round(0.75 * T1 / DT0) * DT0
    first = mfsde.wfr(fe, jax.random.key(1), p0, t1=t_bd, dt0=DT0, alpha=ALPHA, birth_death="clone",
                      diagnostics=False, progress=False)
    rest = mfsde.wfr(fe, jax.random.key(2), first.particles.theta, t0=t_bd, t1=T1, dt0=DT0, alpha=0.0,
                     diagnostics=False, progress=False)
    return first, rest


def series(out):
    parts = out if isinstance(out, tuple) else (out,)
    return (np.concatenate([np.asarray(p.ts) for p in parts]),
            np.concatenate([np.asarray(p.observables["risk"]) for p in parts]))


NAMES = ("gradient flow", "reweighting", "birth-death, then quench")
p0 = fe.prior_sample(jax.random.key(N_CMP), N_CMP)
trajs = {name: run(name, p0) for name in NAMES}
ts_gf, r_gf = series(trajs["gradient flow"])
goal = float(np.interp(0.25 * T1, ts_gf, r_gf))
fig, ax = plt.subplots(figsize=(5, 4))
for name in NAMES:
    ts, r = series(trajs[name])
    hit = np.flatnonzero(r <= goal)
    t_hit = float(ts[hit[0]]) if hit.size else math.inf
    final = trajs[name][-1] if isinstance(trajs[name], tuple) else trajs[name]
    print(f"n = {N_CMP}, {name}: time to risk {goal:.4g}: {t_hit:.4g} "
          f"(speed-up over gradient flow {0.25 * T1 / t_hit:.3g}x); risk at T1 {r[-1]:.4g}, "
          f"test loss {test_loss(final.particles):.4g}")
    ax.semilogy(ts, r, label=name)
ax.set_xlabel("t")
ax.set_ylabel("risk")
ax.legend()
fig.savefig(OUT / "gf_vs_birth_death.png", dpi=120)

# %% [markdown]
# ## 3. The batch-size quench
#
# One-pass SGD with a small batch B has a noise floor of order 1/B; late in training the
# batch grows 16x and the loss drops to the floor of the larger batch.

# %%
n = N_CMP
eta = 0.5
steps = 40 if SMOKE else 4000
p0 = fe.prior_sample(jax.random.key(3), n)
small = mfsde.sgd(fe, jax.random.key(4), p0, num_steps=steps, step_size=eta, batch_size=4, progress=False)
big = mfsde.sgd(fe, jax.random.key(5), small.particles, num_steps=steps // 2, step_size=eta, batch_size=64,
                progress=False)
same = mfsde.sgd(fe, jax.random.key(5), small.particles, num_steps=steps // 2, step_size=eta, batch_size=4,
                 progress=False)
fig, ax = plt.subplots(figsize=(5, 4))
ax.semilogy(small.ts, small.observables["risk"], label="B = 4")
ax.semilogy(small.ts[-1] + big.ts, big.observables["risk"], label="quench: B = 64")
ax.semilogy(small.ts[-1] + same.ts, same.observables["risk"], label="B = 4 continued", alpha=0.6)
ax.set_xlabel("t = step · η")
ax.set_ylabel("risk")
ax.legend()
fig.savefig(OUT / "quench.png", dpi=120)
print(f"quench: risk {float(small.observables['risk'][-1]):.4g} -> {float(big.observables['risk'][-1]):.4g} "
      f"(continued at B = 4: {float(same.observables['risk'][-1]):.4g})")

# %% [markdown]
# ## 4. Great circles
#
# The target and the networks of section 2 along the great circle
# x_0 = √d cos θ, x_1 = √d sin θ.

# %%
theta, xc = spin.great_circle(D, 0, 1)
fig, ax = plt.subplots(figsize=(6, 3.5))
coef = spin.coefficients(D)
ax.plot(theta, spin.three_spin(xc, coef) / spin.target_scale(coef), "k", label="f")
for name in NAMES:
    out = trajs[name]
    ax.plot(theta, fe.output((out[-1] if isinstance(out, tuple) else out).particles, xc), label=f"{name}, n = {N_CMP}")
ax.set_xlabel("θ")
ax.legend()
fig.savefig(OUT / "great_circle.png", dpi=120)

# %% [markdown]
# ## 5. ReLU student–teacher on the sphere: generalisation against P
#
# Teacher: 4 ReLU units with random directions; student: n ReLU units c·relu(a·x + b)
# trained by gradient flow with reweighting (α = 0.05) on P fixed samples. Its test error is
# compared with C'P^(−1/2), C' fitted at the smallest P.

# %%
d_rt = 4 if SMOKE else 10
teacher = jax.random.normal(jax.random.key(7), (4, d_rt)) / np.sqrt(d_rt)


def relu_unit(x):
    c = numpyro.sample("c", dist.Normal(0.0, 1.0))
    a = numpyro.sample("a", dist.Normal(0.0, 1.0 / np.sqrt(d_rt)).expand([d_rt]).to_event(1))
    b = numpyro.sample("b", dist.Normal(0.0, 0.1))
    return c * jax.nn.relu(a @ x.T + b)


def teacher_data(key, p):
    x = spin.sphere(key, p, d_rt)
    return x, jnp.mean(jax.nn.relu(x @ teacher.T), axis=1)


ps = [32, 64] if SMOKE else [64, 128, 256, 512, 1024, 2048]
x_rt, y_rt = teacher_data(jax.random.key(8), 4096)
gen = []
for p in ps:
    x, y = teacher_data(jax.random.key(p), p)
    fe_rt = mfsde.FreeEnergy(relu_unit, x, y, beta=math.inf)
    traj = mfsde.wfr(fe_rt, jax.random.key(9), fe_rt.prior_sample(jax.random.key(10), 64 if SMOKE else 256),
                     t1=2.0 if SMOKE else 1000.0, dt0=0.25, alpha=ALPHA, diagnostics=False, progress=False)
    gen.append(float(jnp.mean((fe_rt.output(traj.particles, x_rt) - y_rt) ** 2)))
c_fit = gen[0] * math.sqrt(ps[0])
fig, ax = plt.subplots(figsize=(5, 4))
ax.loglog(ps, gen, "o-", label=f"student (slope {np.polyfit(np.log(ps), np.log(gen), 1)[0]:+.2f})")
ax.loglog(ps, c_fit / np.sqrt(ps), "k--", label="C' P^(-1/2)")
ax.set_xlabel("P")
ax.set_ylabel("generalisation error")
ax.legend()
fig.savefig(OUT / "student_teacher.png", dpi=120)
print("generalisation error against P:", dict(zip(ps, np.round(gen, 5).tolist())))

# %% [markdown]
# ## 6. Rotskoff's Gaussian bumps
#
# The notebook's example (`models/gaussian_bumps.py`): from the bad start (every bump at
# −2) gradient flow and clone-only birth–death stall (clones copy only where mass already
# is), while birth–death with prior re-injection finds the bump at +2.
# (tests/test_wfr.py asserts the outcomes at the notebook's full size.)

# %%
xb, yb = bumps.make_data()
fe_b = mfsde.FreeEnergy(bumps.unit, xb, yb, beta=math.inf)
steps = 300 if SMOKE else bumps.DEFAULTS["bad_steps"]
p0 = bumps.bad_start(jax.random.key(0))
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
for name, bd in (("gradient flow", None), ("clone", "clone"), ("prior re-injection", "prior")):
    traj = mfsde.wfr(fe_b, jax.random.key(1), p0, t1=steps * bumps.DEFAULTS["dt0"], dt0=bumps.DEFAULTS["dt0"],
                     alpha=0.0 if bd is None else bumps.alpha(), birth_death=bd, diagnostics=False, progress=False)
    ax1.semilogy(traj.ts, traj.observables["risk"], label=name)
    ax2.plot(xb[:, 0], fe_b.output(traj.particles), label=name)
ax2.plot(xb[:, 0], yb, "k", label="target")
ax1.set_xlabel("t")
ax1.set_ylabel("risk")
ax1.legend()
ax2.set_xlabel("x")
ax2.legend()
fig.savefig(OUT / "gaussian_bumps.png", dpi=120)
