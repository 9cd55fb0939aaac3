# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # The planted neuron: mean-field vs lazy scaling
#
# Teacher y = ReLU(⟨w*, x⟩), x ~ N(0, I_d), P training pairs. A width-N network
# f_N(x) = (α/N) Σ_i a_i ReLU(⟨w_i, x⟩) trained by full-batch gradient descent from the prior:
# α = 1 is the mean-field scaling (units move, the network learns w*), α = √N the lazy /
# NTK scaling (units barely move; with P ≲ d^{1+δ} samples it fits at most the degree-≤1
# part of the teacher, so its test risk stays near ‖P_{>1} ReLU‖² ≈ 0.090, the lecture's
# bound). Set `MFSDE_SMOKE=1` for a tiny run.

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
OUT = pathlib.Path(os.environ.get("MFSDE_RUNS", "runs")) / "planted_neuron"
OUT.mkdir(parents=True, exist_ok=True)
ROOT = pathlib.Path(mfsde.__file__).resolve().parents[1]
sn = mfsde.load_model(ROOT / "models" / "single_neuron.py")
d, P, STEPS = (6, 40, 200) if SMOKE else (20, 200, 2000)
WIDTHS = (8, 32) if SMOKE else (16, 64, 256, 1024)

# %%
x, y, w_star = sn.make_data(jax.random.key(0), num_data=P, dim=d, activation=sn.relu, return_teacher=True)
x_test = jax.random.normal(jax.random.key(1), (4000, d))
y_test = sn.relu(x_test @ w_star)
floor = sn.degree_one_remainder(sn.relu)
results = {"mean_field": [], "lazy": []}
for n in WIDTHS:
    for scaling in results:
        train, test = sn.compare_scalings(jax.random.key(2), x, y, x_test, y_test, n, scaling, STEPS, 2.0)
        results[scaling].append(test)
        print(f"N={n:5d} {scaling:10s} train risk {train:.2e}  test risk {test:.4f}")
print(f"degree-<=1 remainder of ReLU: {floor:.4f}; Var(y) = {float(y_test.var()):.4f}")

# %%
fig, ax = plt.subplots(figsize=(5.5, 3.6))
for scaling, marker in (("mean_field", "o-"), ("lazy", "s-")):
    ax.loglog(WIDTHS, results[scaling], marker, label=f"{scaling} (α = {'1' if scaling == 'mean_field' else '√N'})")
ax.axhline(floor, color="gray", ls="--", label="‖P_{>1} ReLU‖²")
ax.set_xlabel("width N")
ax.set_ylabel("test risk")
ax.legend()
fig.tight_layout()
fig.savefig(OUT / "test_risk_vs_width.png", dpi=120)

# %% [markdown]
# The same problem as d → ∞ reduces to the three numbers (a, s = ⟨w, w*⟩, r = ‖P⊥w‖) per
# unit (`sn.reduced_problem`): its mean-field gradient flow is `mfsde.langevin` on an (N, 3)
# array, started from the prior's (a, s, r).

# %%
red = sn.reduced_problem(sn.relu, num_nodes=256 if SMOKE else 512)
th0 = sn.init_reduced(jax.random.key(3), 1000 if SMOKE else 10_000, d)
traj = mfsde.langevin(red, jax.random.key(4), th0, t1=5.0 if SMOKE else 40.0, dt0=0.05, diagnostics=False)
print("reduced dynamics risk:", np.round(np.asarray(traj.observables["risk"])[::20], 4))
fig, ax = plt.subplots(figsize=(5, 3.4))
ax.semilogy(traj.ts, traj.observables["risk"])
ax.set_xlabel("t")
ax.set_ylabel("population risk (reduced)")
fig.tight_layout()
fig.savefig(OUT / "reduced_risk.png", dpi=120)
