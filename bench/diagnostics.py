"""Benchmark: diagnostics against the Langevin run they diagnose, at the same N.

Planted-neuron units with d = 64 (D = 65), P = 1024 data. For N = 10³ and 10⁴ prints the
time of ``kl_to_prior`` (k-NN, O(N² D)), ``w2`` exact (POT network simplex, N ≤ 3000) and
debiased Sinkhorn (POT), ``to_inference_data``, and of a 100-step ``mfsde.langevin`` run
(diagnostics off), with each diagnostic's ratio to that run.

Then the in-run diagnostics' share of a run's wall time (``langevin``'s ``diagnostics``
option): for N particles and S steps (101 saves, or one per step), the run with the default
(a budget of 10% of the run, ``mfsde.dynamics._diagnostic_saves``), with ``diagnostics=True``
(every save: the default before issue 15, for N ≤ 16384) and with ``diagnostics=False``,
timed in the same run after compilation; the share is (t − t_off) / t.

Usage: python bench/diagnostics.py [--n 1000 10000] [--steps 100] [--policy-n 1024 4096 16384]
       [--policy-steps 20 200 1000] [--smoke]
"""

from __future__ import annotations

import argparse
import pathlib
import time

import jax

import mfsde

ROOT = pathlib.Path(__file__).resolve().parents[1]
neuron = mfsde.load_model(ROOT / "models" / "single_neuron.py")


def timed(fn):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t


def bench(n: int, steps: int, p: int, d: int) -> dict:
    x, y = neuron.make_data(jax.random.key(0), num_data=p, dim=d)
    fe = mfsde.FreeEnergy(neuron.unit, x, y, beta=100.0)
    p0 = fe.prior_sample(jax.random.key(1), n)
    run = lambda: mfsde.langevin(fe, jax.random.key(2), p0, t1=steps * 0.01, dt0=0.01, ts=[steps * 0.01],  # noqa: E731
                                 diagnostics=False, progress=False).particles
    run()
    t_run = timed(run)
    traj = mfsde.langevin(fe, jax.random.key(2), p0, t1=steps * 0.01, dt0=0.01, diagnostics=False, progress=False)
    kl = jax.jit(lambda q: mfsde.kl_to_prior(q, fe))
    kl(traj.particles)
    res = {"n": n, "langevin_s": t_run, "kl_s": timed(lambda: kl(traj.particles))}
    prior = fe.prior_sample(jax.random.key(3), n)
    if n <= 3000:
        res["w2_exact_s"] = timed(lambda: mfsde.w2(traj.particles, prior, method="exact"))
    res["w2_sinkhorn_s"] = timed(lambda: mfsde.w2(traj.particles, prior, method="sinkhorn"))
    res["to_inference_data_s"] = timed(lambda: mfsde.to_inference_data(traj, fe)["posterior"]["w"].values)
    print(f"N={n}, D={fe.dim}, P={p}: {steps}-step langevin {t_run:.3f} s")
    for k, v in res.items():
        if k.endswith("_s") and k != "langevin_s":
            print(f"  {k[:-2]:>18}: {v:8.3f} s  = {v / t_run:6.3f} x the run")
    return res


ROUNDS = 5


def policy_share(n: int, steps: int, p: int, d: int) -> dict:
    x, y = neuron.make_data(jax.random.key(0), num_data=p, dim=d)
    fe = mfsde.FreeEnergy(neuron.unit, x, y, beta=100.0)
    p0 = fe.prior_sample(jax.random.key(1), n)
    runs = {name: jax.jit(lambda key, q, diag=diag: mfsde.langevin(fe, key, q, t1=steps * 0.01, dt0=0.01,
                                                                   progress=False, diagnostics=diag).observables)
            for name, diag in (("off", False), ("default", None), ("every save", True))}
    for run in runs.values():
        jax.block_until_ready(run(jax.random.key(2), p0))
    times = {name: [] for name in runs}
    for _ in range(ROUNDS):  # interleaved, best of ROUNDS: this shared machine's noise is +-20%
        for name, run in runs.items():
            times[name].append(timed(lambda: run(jax.random.key(2), p0)))  # noqa: B023
    t = {name: min(v) for name, v in times.items()}
    from mfsde.dynamics._diagnostic_saves import diagnostic_save_indices, diagnostics_every

    saves = min(101, steps + 1)
    k = diagnostics_every(steps, saves, n, p)
    res = dict(n=n, steps=steps, every=k, diagnostic_saves=int(diagnostic_save_indices(saves, k).size),
               **{f"{k_}_s": v for k_, v in t.items()})
    share = {k_: (t[k_] - t["off"]) / t[k_] for k_ in ("default", "every save")}
    print(f"  N={n:6d} S={steps:5d}: off {t['off']:8.3f} s | default (every {k} -> {res['diagnostic_saves']} of "
          f"{saves} saves) {t['default']:8.3f} s, share {100 * share['default']:5.1f}% | every save "
          f"{t['every save']:8.3f} s, share {100 * share['every save']:5.1f}%")
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--p", type=int, default=1024)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--policy-n", type=int, nargs="+", default=[1024, 4096, 16384])
    ap.add_argument("--policy-steps", type=int, nargs="+", default=[20, 200, 1000])
    ap.add_argument("--no-tools", action="store_true", help="only the in-run diagnostics' share")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.n, args.steps, args.p, args.d = [64], 5, 32, 4
        args.policy_n, args.policy_steps = [64], [20, 100]
    print(f"device: {jax.devices()[0].device_kind}")
    for n in [] if args.no_tools else args.n:
        bench(n, args.steps, args.p, args.d)
    print(f"in-run diagnostics' share of the run's wall time (P={args.p}, d={args.d}):")
    for n in args.policy_n:
        for steps in args.policy_steps:
            if n * steps <= 16384 * 200 or n <= 4096:
                policy_share(n, steps, args.p, args.d)


if __name__ == "__main__":
    main()
