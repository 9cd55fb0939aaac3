# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Tzen–Raginsky: lazy training as a Schrödinger bridge
#
# Tzen & Raginsky minimise ½R(ρ) + (τ/β_TR) KL(ρ‖N(0, τI)): in mfsde's convention the prior
# is π₀ = N(0, τI) and β = β_TR/τ. The minimiser ρ* is the time-1 law of the optimally
# controlled McKean–Vlasov SDE from W_0 = 0 (`mfsde.schrodinger_bridge`), whose control cost
# is KL(ρ*‖π₀); SGD from a Gaussian initialisation follows the greedy version
# (`mfsde.mckean_vlasov`). We use the two-parameter unit of `models/scalar_tanh.py`, whose
# ρ* is known by quadrature. Set `MFSDE_SMOKE=1` for a tiny run.

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
OUT = pathlib.Path(os.environ.get("MFSDE_RUNS", "runs")) / "tzen_raginsky"
OUT.mkdir(parents=True, exist_ok=True)
ROOT = pathlib.Path(mfsde.__file__).resolve().parents[1]
st = mfsde.load_model(ROOT / "models" / "scalar_tanh.py")
BETAS = np.logspace(-1.5, 1.0, 4 if SMOKE else 8)
N_BRIDGE, N_INNER, DT = (400, 16, 0.05) if SMOKE else (4000, 64, 0.01)
WIDTHS = (100, 1000) if SMOKE else (100, 1000, 10000)
N_W2 = 500 if SMOKE else 2000

# %% [markdown]
# ## 1. KL(ρ*‖γ_τ) against β_TR
# For small β_TR the Gibbs tilt is a small perturbation of the prior, so
# KL ≈ (β_TR/τ)² Var_π₀(Ψ)/2: slope 2 on log-log axes. Talagrand's inequality for the
# Gaussian γ_τ bounds W2(ρ*, γ_τ) ≤ sqrt(2τ KL).

# %%
tau = 0.25
x, y = st.make_data(jax.random.key(0), num_data=64, scale=0.5)
unit = st.make_unit(np.sqrt(tau), np.sqrt(tau))
kls, w2s = [], []
for b in BETAS:
    ref = st.fixed_point_quadrature(x, y, b / tau, np.sqrt(tau), np.sqrt(tau))
    kls.append(ref["kl"])
    draws = st.sample_quadrature(jax.random.key(1), ref, N_W2)
    prior = np.sqrt(tau) * jax.random.normal(jax.random.key(2), (N_W2, 2))
    w2s.append(mfsde.w2(draws, prior))
kls, w2s = np.array(kls), np.array(w2s)
floor = mfsde.w2(np.sqrt(tau) * jax.random.normal(jax.random.key(3), (N_W2, 2)),
                 np.sqrt(tau) * jax.random.normal(jax.random.key(4), (N_W2, 2)))
slope = np.polyfit(np.log(BETAS[:3]), np.log(kls[:3]), 1)[0]
print(f"log-log slope of KL at small beta: {slope:.2f} (theory 2)")
for b, k, w in zip(BETAS, kls, w2s):
    print(f"beta_TR={b:7.3f}  KL={k:.3e}  W2={w:.3f}  sqrt(2 tau KL)={np.sqrt(2 * tau * k):.3f}")

fig, ax = plt.subplots(1, 2, figsize=(9, 3.6))
ax[0].loglog(BETAS, kls, "o-", label="KL(ρ*‖γ_τ) (quadrature)")
ax[0].loglog(BETAS, kls[0] * (BETAS / BETAS[0]) ** 2, "k--", label="slope 2")
ax[0].set_xlabel("β_TR")
ax[0].legend()
bound = np.sqrt(2 * tau * kls)
ax[1].plot(bound, w2s, "o", label="W2(ρ*, γ_τ) (POT, two samples)")
ax[1].plot(bound, bound, "k--", label="W2 = sqrt(2τ KL)")
ax[1].axhline(floor, color="gray", ls=":", label="two-sample floor")
ax[1].set_xlabel("sqrt(2τ KL)")
ax[1].legend()
fig.tight_layout()
fig.savefig(OUT / "kl_w2_vs_beta.png", dpi=120)

# %% [markdown]
# ## 2. Bridge, greedy SDE and SGD in the lazy regime
# Tzen–Raginsky's regime: τ = ε²/d, β_TR = ε (here d = 1). SGD runs
# W ← W + η β_TR (y − f_N(x)) ∇σ(x; W) from W_0 ~ γ_τ^{⊗N}, one fresh pair per step,
# for k ≤ 1/η steps: in mfsde terms `sgd(..., step_size=η β_TR, noise=False,
# prior_drift=False)`. Its risk R_N(W_k) should track R(μ*_{kη}) along the bridge, with a
# gap shrinking like N^{-1/2}, while no unit moves far (laziness).

# %%
eps = 0.5
tau, beta_tr = eps**2, eps
x, y = st.make_data(jax.random.key(5), num_data=512, scale=eps)
fe = mfsde.FreeEnergy(st.make_unit(np.sqrt(tau), np.sqrt(tau)), x, y, beta_tr / tau)
ref = st.fixed_point_quadrature(x, y, fe.beta, np.sqrt(tau), np.sqrt(tau))
ts = np.linspace(0.0, 1.0, 11)
bridge = mfsde.schrodinger_bridge(fe, ref["output"], jax.random.key(6), N_BRIDGE, dt0=DT, num_inner=N_INNER,
                                  samples=st.sample_quadrature(jax.random.key(7), ref, 8000),
                                  log_normalizer=ref["log_z"], ts=ts)
greedy = mfsde.mckean_vlasov(fe, jax.random.key(8), N_BRIDGE, dt0=DT, ts=ts)
ob, og = bridge.observables, greedy.observables
print(f"bridge: control cost {float(ob['control_cost'][-1]):.4f} vs KL(ρ*‖π₀) {ref['kl']:.4f}; "
      f"J {float(ob['total_cost'][-1]):.4f} vs β F(ρ*) {ref['beta_f']:.4f}")
print(f"greedy: J {float(og['total_cost'][-1]):.4f} (>= β F); terminal risks bridge "
      f"{float(ob['risk'][-1]):.4f}, greedy {float(og['risk'][-1]):.4f}, ρ* {ref['risk']:.4f}; "
      f"W2(bridge W_1, greedy W_1) = {mfsde.w2(bridge.particles, greedy.particles):.4f}")
print("inner ESS along t (mean / min of", N_INNER, "):", np.round(np.asarray(ob["inner_ess"]), 1),
      np.round(np.asarray(ob["inner_ess_min"]), 1))

steps = 200
sgd_runs = {}
for n in WIDTHS:
    w0 = fe.prior_sample(jax.random.key(9), n)
    sgd_runs[n] = mfsde.sgd(fe, jax.random.key(10), w0, num_steps=steps, step_size=beta_tr / steps, batch_size=1, noise=False,
                            prior_drift=False, save_every=steps // 10)
    risk_n = np.asarray(sgd_runs[n].observables["risk"])
    gap = np.max(np.abs(risk_n - np.asarray(ob["risk"])))
    gap_greedy = np.max(np.abs(risk_n - np.asarray(og["risk"])))
    lazy = float(sgd_runs[n].observables["max_displacement"][-1])
    print(f"SGD N={n:6d}: max_k |R_N(W_k) - R(mu*_k eta)| = {gap:.4f} (x sqrt(N) = {gap * np.sqrt(n):.2f}), "
          f"vs greedy {gap_greedy:.4f}; max_i |W_k^i - W_0^i| = {lazy:.3f} (prior sd {np.sqrt(tau):.2f})")

# %% [markdown]
# SGD's mean-field limit is the noiseless McKean–Vlasov flow from W_0 ~ γ_τ, which is
# neither SDE (both start at δ_0 and add noise Σ^{1/2}dB): the gap to the bridge (and to the
# greedy SDE) has an N-independent part of that size, so it shrinks like N^{-1/2} only until
# it reaches it (measured 0.026, 0.020, 0.016 at N = 100, 1000, 10000). In this lazy regime
# greedy and optimal dynamics nearly coincide (their J differ by less than the N error).

# %% [markdown]
# ## 3. The transport map: lazy training as transport
# ρ* is the push-forward of the prior by a map T (Brenier–McCann), Lipschitz by Caffarelli
# because −log ρ* = ½wᵀΣ⁻¹w + βΨ(w; ρ*) is strongly convex for small β:
# ‖∇T‖ ≤ sqrt((1/σ²_min)/(1/σ²_max + β κ_min)), κ_min the least eigenvalue of ∇²Ψ(·; ρ*).
# `mfsde.transport_map` estimates T by ott-jax's entropic map (Sinkhorn between prior draws
# and draws of ρ*), `mfsde.caffarelli_bound` computes the bound from the curvature of Ψ.
# Then W = (W¹…W^N) i.i.d. from the prior, transported, is an i.i.d. sample of ρ*: how far
# does each unit move, and how close is the transported network to the target?

# %%
N_T = 1000 if SMOKE else 4000
rho_draws = st.sample_quadrature(jax.random.key(11), ref, N_T)
T = mfsde.transport_map(fe, rho_draws, jax.random.key(12))
probe = fe.prior_sample(jax.random.key(13), 200 if SMOKE else 1000)
caff = mfsde.caffarelli_bound(fe, ref["output"], np.concatenate([np.asarray(rho_draws[:500]), np.asarray(probe)]))
lip = float(T.lipschitz(probe, quantile=0.9))
print(f"epsilon = {float(T.epsilon):.4f}; Lipschitz of T (90% quantile of |grad T| over prior draws) {lip:.3f}; "
      f"Caffarelli's bound {caff.lipschitz_bound:.3f} (kappa_min {caff.kappa_min:.3f}, strong convexity "
      f"{caff.strong_convexity:.3f})")

lip_at, bound_at = [], []
betas_tr = np.array([0.1, 0.25, 0.5, 1.0] if SMOKE else [0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5])
for b_tr in betas_tr:
    fe_b = mfsde.FreeEnergy(fe.unit, x, y, b_tr / tau)
    ref_b = st.fixed_point_quadrature(x, y, fe_b.beta, np.sqrt(tau), np.sqrt(tau))
    draws_b = st.sample_quadrature(jax.random.key(14), ref_b, N_T)
    lip_at.append(float(mfsde.transport_map(fe_b, draws_b, jax.random.key(15)).lipschitz(probe, quantile=0.9)))
    bound_at.append(mfsde.caffarelli_bound(fe_b, ref_b["output"],
                                           np.concatenate([np.asarray(draws_b[:500]), np.asarray(probe)])).lipschitz_bound)
for b_tr, l_, c_ in zip(betas_tr, lip_at, bound_at):
    print(f"beta_TR={b_tr:5.2f}: Lipschitz estimate {l_:.3f}, Caffarelli bound {c_:.3f}")
# The estimate is of an empirical map, rough where its kernel covers few target points: it
# is biased up, less so as the target cloud grows.
for m in (500, 1000) if SMOKE else (1000, 4000, 16000):
    t_m = mfsde.transport_map(fe, st.sample_quadrature(jax.random.key(11), ref, m), jax.random.key(12))
    print(f"M={m:6d} target points: 90% quantile of |grad T| {float(t_m.lipschitz(probe, quantile=0.9)):.3f} "
          f"(bound {caff.lipschitz_bound:.3f})")

# Displacements of i.i.d. prior units, and the transported network against the random one.
# w ↦ ‖T(w) − w‖ is (L + 1)-Lipschitz, so under γ_τ Gaussian concentration gives
# max_i ‖T(Wⁱ) − Wⁱ‖ ≤ E‖T(W) − W‖ + (L + 1) sqrt(2τ log(N/δ)) with probability 1 − δ.
max_disp, dist_f, risk_t, risk_w, risk_exact = [], [], [], [], []
for n in WIDTHS:
    w_n = fe.prior_sample(jax.random.key(16), n)
    t_n = T(w_n)
    disp = np.linalg.norm(np.asarray(t_n - w_n), axis=1)
    max_disp.append(disp.max())
    dist_f.append(float(np.sqrt(np.mean((np.asarray(fe.output(t_n)) - np.asarray(fe.output(w_n))) ** 2))))
    risk_t.append(float(fe.risk(t_n)))
    risk_w.append(float(fe.risk(w_n)))
    risk_exact.append(float(fe.risk(st.sample_quadrature(jax.random.key(22), ref, n))))
mean_disp = float(np.mean(np.linalg.norm(np.asarray(T(probe) - probe), axis=1)))
delta = 0.05
for n, m_, d_, rt, rw, re_ in zip(WIDTHS, max_disp, dist_f, risk_t, risk_w, risk_exact):
    rate = mean_disp + (caff.lipschitz_bound + 1) * np.sqrt(2 * tau * np.log(n / delta))
    print(f"N={n:6d}: max_i |T(W_i) - W_i| = {m_:.3f} (concentration bound {rate:.3f}); "
          f"|f_N(T(W)) - f_N(W)|_L2 = {d_:.4f}; R(T(W)) = {rt:.4f}, R of N exact draws of rho* = {re_:.4f}, "
          f"R(rho*) = {ref['risk']:.4f}, R(W) = {rw:.4f}")

fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
w_hist = fe.prior_sample(jax.random.key(17), WIDTHS[-1])
ax[0].hist(np.linalg.norm(np.asarray(T(w_hist) - w_hist), axis=1), bins=50, density=True)
ax[0].set_xlabel("‖T(W) − W‖, W ~ γ_τ")
ax[1].plot(betas_tr, lip_at, "o-", label="‖∇T‖ (90% quantile, entropic map)")
ax[1].plot(betas_tr, bound_at, "k--", label="Caffarelli's bound")
ax[1].set_xlabel("β_TR")
ax[1].legend()
ax[2].semilogx(WIDTHS, np.sqrt(risk_t), "o-", label="‖f − f_N(·; T(W))‖")
ax[2].semilogx(WIDTHS, dist_f, "s-", label="‖f_N(·; T(W)) − f_N(·; W)‖")
ax[2].axhline(np.sqrt(ref["risk"]), color="k", ls="--", label="‖f − f_ρ*‖")
ax[2].set_xlabel("N")
ax[2].legend()
fig.tight_layout()
fig.savefig(OUT / "transport_map.png", dpi=120)

# %% [markdown]
# ## 4. The value function and the Gibbs flow
# V*(w, t) = −log E[exp(−βΨ(B_1; ρ*)) | B_t = w] (mfsde's units; Tzen–Raginsky's V is τ
# times it) drives the bridge, u* = −Σ∇V*, and solves the HJB equation
# ∂_t V + ½ tr(Σ∇²V) − ½∇VᵀΣ∇V = 0 with V(·, 1) = βΨ(·; ρ*). The Gibbs flow Q_{w,t}
# concentrates on w as t → 1, with ∫‖v − w‖² Q_{w,t}(dv) ≤ κ(β_TR + τd)(1 − t); the greedy
# SDE replaces E_Q[∇Ψ] by ∇Ψ(w), which errs by the greedy gap ‖E_Q∇Ψ − ∇Ψ(W_t)‖.

# %%
V = mfsde.value_function(fe, ref["output"], jax.random.key(18), num_inner=256 if SMOKE else 4096,
                         samples=rho_draws, log_normalizer=ref["log_z"])
pts = 0.9 * np.asarray(rho_draws[:4]) + 0.01
h, t_mid = 0.03, 0.5  # float32: steps of 1e-3 would leave rounding of 1e-7/h² in the second differences
v0 = np.asarray(V(pts, t_mid))
dvdt = (np.asarray(V(pts, t_mid + h)) - np.asarray(V(pts, t_mid - h))) / (2 * h)
var = np.full(2, tau)
vp = np.stack([np.asarray(V(pts + h * e, t_mid)) for e in np.eye(2)], 1)
vm = np.stack([np.asarray(V(pts - h * e, t_mid)) for e in np.eye(2)], 1)
grad_v, lap_v = (vp - vm) / (2 * h), (vp - 2 * v0[:, None] + vm) / h**2
hjb = dvdt + 0.5 * lap_v @ var - 0.5 * grad_v**2 @ var
print("HJB residual at 4 points (finite differences):", np.round(hjb, 4), "against its terms |dV/dt|",
      np.round(np.abs(dvdt), 3), "|tr(Sigma V'')|/2", np.round(np.abs(0.5 * lap_v @ var), 3), "|grad V Sigma grad V|/2",
      np.round(0.5 * grad_v**2 @ var, 3), "(a Monte Carlo error of the inner estimate: it shrinks with num_inner)")
print("-Sigma grad V vs u* (the bridge's drift):", np.round(-var * grad_v, 3).tolist(), np.round(np.asarray(V.control(pts, t_mid), dtype=float), 3).tolist())

spread, gap = np.asarray(ob["gibbs_spread"]), np.asarray(ob["greedy_gap"])
remaining = 1 - np.asarray(bridge.ts)
scale = (beta_tr + tau * fe.dim) * remaining
ratio = spread[:-1] / scale[:-1]
print("E_Q|v - W_t|^2 / ((beta_TR + tau d)(1 - t)) along the bridge:", np.round(ratio, 3), "(bounded: kappa)")
print("greedy gap |E_Q grad Psi - grad Psi(W_t)| along the bridge:", np.round(gap, 4))
fig, ax = plt.subplots(1, 2, figsize=(9, 3.6))
ax[0].plot(remaining, spread, "o-", label="E_Q‖v − W_t‖² (bridge particles)")
ax[0].plot(remaining, np.max(ratio) * scale, "k--", label="κ(β_TR + τd)(1 − t), κ = max ratio")
ax[0].set_xlabel("1 − t")
ax[0].legend()
ax[1].plot(np.asarray(bridge.ts), gap, "o-")
ax[1].set_xlabel("t")
ax[1].set_ylabel("greedy gap ‖E_Q∇Ψ − ∇Ψ(W_t)‖")
fig.tight_layout()
fig.savefig(OUT / "gibbs_flow.png", dpi=120)

# %% [markdown]
# ## 5. The regimes
# - Weak regularisation (β → ∞ with τ fixed, so τ = o(β)): F(ρ*) → ½ inf R. On the linear
#   unit (closed form: ρ* = N(m*, I), f_ρ* = x·m*, inf R the least-squares residual) F(ρ*)
#   and ½R(ρ*) close in on ½ inf R, their gap KL/β = O(1/β).
# - Strong regularisation (τ = ε²/d, β_TR = ε → 0): KL(ρ*‖γ_τ) = O(κd) and
#   W2(ρ*, γ_τ) ≤ sqrt(2τ KL) = O(ε).
# - Realizable (y = f(·; μ°)): F(ρ*) ≤ F(μ°) = KL(μ°‖π₀)/β, so R(ρ*) ≤ 2 KL(μ°‖π₀)/β
#   (mfsde's convention). The linear unit with the teacher μ° = N(θ°, I): f_μ° = x·θ°,
#   KL(μ°‖π₀) = ‖θ°‖²/2, ρ* = N(m*, I) in closed form.

# %%
lg = mfsde.load_model("linear_gaussian")
x_w, y_w = lg.make_data(jax.random.key(19), 256, 3)
betas_w = np.logspace(0, 4, 5 if SMOKE else 9)
half_r = np.array([0.5 * float(np.mean((np.asarray(x_w @ lg.fixed_point_mean(x_w, y_w, b)) - np.asarray(y_w)) ** 2))
                   for b in betas_w])
f_w = half_r + np.array([lg.kl_fixed_point(x_w, y_w, b) for b in betas_w]) / betas_w
lstsq = np.linalg.lstsq(np.asarray(x_w), np.asarray(y_w), rcond=None)[0]
half_inf_r = 0.5 * float(np.mean((np.asarray(x_w) @ lstsq - np.asarray(y_w)) ** 2))
for b, f_, r_ in zip(betas_w, f_w, half_r):
    print(f"weak: beta={b:9.1f}  F(rho*)={f_:.5f}  R(rho*)/2={r_:.5f}  (1/2) inf R={half_inf_r:.5f}")

eps_s = np.array([0.5, 0.25, 0.125] if SMOKE else [0.8, 0.4, 0.2, 0.1, 0.05])
kl_s, w2_s = [], []
for e in eps_s:
    tau_e = e**2  # d = 1
    x_s, y_s = st.make_data(jax.random.key(20), num_data=64, scale=e)
    r_s = st.fixed_point_quadrature(x_s, y_s, e / tau_e, e, e)
    kl_s.append(r_s["kl"])
    w2_s.append(np.sqrt(2 * tau_e * r_s["kl"]))
print("strong: eps", eps_s, "KL", np.round(kl_s, 5), "W2 bound / eps", np.round(np.array(w2_s) / eps_s, 4))

x_r = jax.random.normal(jax.random.key(21), (256, 3))
theta_o = np.array([1.0, -0.5, 0.25])
y_r = x_r @ theta_o
kl_teacher = 0.5 * theta_o @ theta_o
betas_r = np.logspace(-0.5, 2, 6)
risk_r = [float(np.mean((np.asarray(x_r @ lg.fixed_point_mean(x_r, y_r, b)) - np.asarray(y_r)) ** 2)) for b in betas_r]
for b, r_ in zip(betas_r, risk_r):
    print(f"realizable: beta={b:7.2f}  R(rho*)={r_:.5f}  <=  2 KL(mu°|pi0)/beta={2 * kl_teacher / b:.5f}")

fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
ax[0].loglog(betas_w, f_w - half_inf_r, "o-", label="F(ρ*) − ½ inf R")
ax[0].loglog(betas_w, half_r - half_inf_r, "s-", label="½R(ρ*) − ½ inf R")
ax[0].set_xlabel("β (prior fixed; linear unit)")
ax[0].legend()
ax[1].loglog(eps_s, kl_s, "o-", label="KL(ρ*‖γ_τ)")
ax[1].loglog(eps_s, w2_s, "s-", label="sqrt(2τ KL) ≥ W2")
ax[1].loglog(eps_s, eps_s, "k--", label="ε")
ax[1].set_xlabel("ε (τ = ε², β_TR = ε)")
ax[1].legend()
ax[2].loglog(betas_r, risk_r, "o-", label="R(ρ*)")
ax[2].loglog(betas_r, 2 * kl_teacher / betas_r, "k--", label="2 KL(μ°‖π₀)/β")
ax[2].set_xlabel("β")
ax[2].legend()
fig.tight_layout()
fig.savefig(OUT / "regimes.png", dpi=120)
