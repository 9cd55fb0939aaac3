"""Benchmark: diagnostics against the Langevin run they diagnose, at the same N.

Planted-neuron units with d = 64 (D = 65), P = 1024 data. For N = 10³ and 10⁴ prints the
time of ``kl_to_prior`` (k-NN, O(N² D)), ``w2`` exact (POT network simplex, N ≤ 3000) and
debiased Sinkhorn (POT), ``to_inference_data``, and of a 100-step ``mfsde.langevin`` run
(diagnostics off), with each diagnostic's ratio to that run.

Usage: python bench/diagnostics.py [--n 1000 10000] [--steps 100] [--smoke]
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--p", type=int, default=1024)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.n, args.steps, args.p, args.d = [64], 5, 32, 4
    print(f"device: {jax.devices()[0].device_kind}")
    for n in args.n:
        bench(n, args.steps, args.p, args.d)


if __name__ == "__main__":
    main()
