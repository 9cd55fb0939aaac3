"""Benchmark: Rotskoff–Vanden-Eijnden's weighted and birth–death dynamics (``mfsde.wfr``).

1. Cost of a step against a Langevin step on the same problem, in one run: the planted tanh
   neuron at N = P (default 4096), d = 64, gradient flow (β = ∞, Euler), ``langevin`` vs
   ``wfr`` with reweighting, clone and prior birth–death; and at finite β (LM steps)
   ``langevin`` vs ``wfr`` clone, whose rate needs the O(N² D) kernel density estimate.
2. Two separated modes: the scalar tanh unit a·tanh(w x) at β = 40, whose fixed point puts
   half its mass on each of the mirror modes (a, w) and (−a, −w). All particles start in the
   w > 0 mode; the time until the fraction in it is within 0.05 of ½ (first save), for
   Langevin and Langevin with birth–death (α = 10, both variants), 4 runs each.
3. The 3-spin target (``models/three_spin.py``, d = 10, 4096 training points drawn once):
   risk and test loss at t = 2000 (dt0 = 0.25) against n for gradient flow, reweighting
   (α = 0.05) and clone birth–death for 3/4 of the time then gradient flow (the notebook's
   quench), with the fitted log-log slopes (predicted −1).

Usage: python bench/wfr.py [--n 4096 --d 64 --steps 20] [--smoke]
"""

from __future__ import annotations

import argparse
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

import mfsde

ROOT = pathlib.Path(__file__).resolve().parents[1]
sn = mfsde.load_model(ROOT / "models" / "single_neuron.py")
st = mfsde.load_model(ROOT / "models" / "scalar_tanh.py")
spin = mfsde.load_model(ROOT / "models" / "three_spin.py")


def timed(fn):
    """Seconds of the second call (the first compiles)."""
    jax.block_until_ready(jax.tree.leaves(fn()))
    t = time.perf_counter()
    jax.block_until_ready(jax.tree.leaves(fn()))
    return time.perf_counter() - t


def step_costs(n, d, steps, smoke=False):
    x, y = sn.make_data(jax.random.key(0), num_data=n, dim=d)
    out = {}
    for beta in (math.inf,) if smoke else (math.inf, 200.0):
        fe = mfsde.FreeEnergy(sn.unit, x, y, beta=beta)
        p0 = fe.prior_sample(jax.random.key(1), n)
        dt0 = 0.05
        t1 = steps * dt0
        ts = np.array([0.0, t1])
        key = jax.random.key(2)
        runs = {"langevin": lambda: mfsde.langevin(fe, None if math.isinf(beta) else key, p0, t1=t1, dt0=dt0, ts=ts,
                                                   diagnostics=False, progress=False).particles}
        variants = ("clone",) if smoke or not math.isinf(beta) else (None, "clone", "prior")
        for bd in variants:
            runs[f"wfr {bd or 'reweight'}"] = (lambda bd: lambda: mfsde.wfr(
                fe, key, p0, t1=t1, dt0=dt0, alpha=1.0, birth_death=bd, ts=ts, diagnostics=False,
                progress=False).particles.theta)(bd)
        base = None
        for name, fn in runs.items():
            ms = 1e3 * timed(fn) / steps
            base = ms if base is None else base
            out[(beta, name)] = ms
            print(f"  beta={beta:g} {name:14s} {ms:8.2f} ms/step   ratio to langevin {ms / base:5.2f}")
    return out


def mode_fraction(mu):
    w = mu.weights()
    return w @ (mu.theta[:, 1] > 0).astype(mu.theta.dtype)


def two_modes(n, t1, runs, smoke=False):
    x, y = st.make_data(jax.random.key(0))
    fe = mfsde.FreeEnergy(st.unit, x, y, beta=40.0)
    p0 = fe.prior_sample(jax.random.key(1), n)
    p0 = p0 * jnp.sign(p0[:, 1:2])  # (a, w) -> (-a, -w) where w < 0: the same unit, all in one mode
    keys = jax.random.split(jax.random.key(2), runs)
    dt0 = 0.02
    ts = np.linspace(0.0, t1, min(201, int(round(t1 / dt0)) + 1))
    obs = {"mode_fraction": mode_fraction}
    results = {}
    langevin_obs = {"mode_fraction": lambda th: jnp.mean(th[:, 1] > 0)}
    runs_by_name = {
        "langevin": lambda: mfsde.langevin(fe, keys, p0, t1=t1, dt0=dt0, ts=ts, observables=langevin_obs,
                                           diagnostics=False, progress=False),
        "langevin + clone": lambda: mfsde.wfr(fe, keys, p0, t1=t1, dt0=dt0, alpha=10.0, birth_death="clone", ts=ts,
                                              observables=obs, diagnostics=False, progress=False),
        "langevin + prior": lambda: mfsde.wfr(fe, keys, p0, t1=t1, dt0=dt0, alpha=10.0, birth_death="prior", ts=ts,
                                              observables=obs, diagnostics=False, progress=False),
    }
    for name in ("langevin", "langevin + prior") if smoke else runs_by_name:
        fn = runs_by_name[name]
        t = time.perf_counter()
        traj = fn()
        frac = np.asarray(traj.observables["mode_fraction"])
        tss = np.asarray(traj.ts)
        hit = [float(tss[np.argmax(np.abs(f - 0.5) < 0.05)]) if np.any(np.abs(f - 0.5) < 0.05) else math.inf
               for f in frac]
        results[name] = hit
        print(f"  {name:18s} time to within 0.05 of 1/2: median {np.median(hit):7.2f} (runs {np.round(hit, 2)}); "
              f"final fraction {np.round(frac[:, -1], 3)}; wall {time.perf_counter() - t:.1f}s")
    return results


def birth_death_then_quench(fe, key, p0, t1, dt0, alpha):
    """Birth–death (clone) for the first 3/4 of [0, t1], then plain gradient flow (α = 0):
    the notebook's quench, which removes the jumps' noise floor at the end."""
    t_bd = round(0.75 * t1 / dt0) * dt0
    first = mfsde.wfr(fe, key, p0, t1=t_bd, dt0=dt0, alpha=alpha, birth_death="clone", ts=np.array([0.0, t_bd]),
                      diagnostics=False, progress=False)
    return mfsde.wfr(fe, key, first.particles.theta, t0=t_bd, t1=t1, dt0=dt0, alpha=0.0,
                     ts=np.array([t_bd, t1]), diagnostics=False, progress=False)


def three_spin_table(ns, dim, t1, dt0, alpha=0.05, smoke=False):
    sampler = spin.make_sampler(dim)
    fe = mfsde.FreeEnergy.from_sampler(spin.make_unit(dim), sampler, math.inf, jax.random.key(0), num_eval=4096)
    x_test, y_test = sampler(jax.random.key(99), 8192)
    names = ("gradient flow", f"reweighting (alpha = {alpha:g})", "birth-death then quench")
    rows = []
    for n in ns:
        p0 = fe.prior_sample(jax.random.key(n), n)
        key = jax.random.key(1)
        runs = (lambda: mfsde.wfr(fe, key, p0, t1=t1, dt0=dt0, alpha=0.0, ts=np.array([0.0, t1]),
                                  diagnostics=False, progress=False),
                lambda: mfsde.wfr(fe, key, p0, t1=t1, dt0=dt0, alpha=alpha, ts=np.array([0.0, t1]),
                                  diagnostics=False, progress=False),
                lambda: birth_death_then_quench(fe, key, p0, t1, dt0, alpha))[: 1 if smoke else 3]
        row = [n]
        names = names[: len(runs)]
        for run in runs:
            traj = run()
            row += [float(traj.observables["risk"][-1]),
                    float(jnp.mean((fe.output(traj.particles, x_test) - y_test) ** 2))]
        rows.append(row)
        print(f"  n = {n:5d}   " + "   ".join(f"{name}: risk {row[1 + 2 * k]:.4g}, test {row[2 + 2 * k]:.4g}"
                                          for k, name in enumerate(names)))
    rows = np.array(rows)
    for k, name in enumerate(names):
        fit = [np.polyfit(np.log(rows[:, 0]), np.log(rows[:, 1 + 2 * k + j]), 1)[0] for j in (0, 1)]
        print(f"  log-log slope against n, {name}: risk on the {fe.num_data} training points {fit[0]:+.2f}, "
              f"test loss {fit[1]:+.2f} (predicted -1)")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    modes = dict(n=256, t1=40.0, runs=4)
    spin_sizes = dict(ns=[16, 64, 256, 1024], dim=10, t1=2000.0, dt0=0.25)
    if args.smoke:
        args.n, args.d, args.steps = 128, 8, 5
        modes = dict(n=32, t1=2.0, runs=2, smoke=True)
        spin_sizes = dict(ns=[16, 32], dim=4, t1=1.0, dt0=0.1, smoke=True)
    print(f"1. step cost, N = P = {args.n}, d = {args.d}, {args.steps} steps")
    step_costs(args.n, args.d, args.steps, args.smoke)
    print(f"2. two modes: scalar tanh, beta = 40, N = {modes['n']}, all particles start in the w > 0 mode")
    two_modes(**modes)
    print(f"3. three-spin, d = {spin_sizes['dim']}: test loss at t = {spin_sizes['t1']:g} against n")
    three_spin_table(**spin_sizes)


if __name__ == "__main__":
    main()
