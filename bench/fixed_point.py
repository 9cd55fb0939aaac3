"""Benchmark: the self-consistent Gibbs fixed point of the planted neuron by BlackJAX MCMC.

Prints the Newton rounds and wall time of ``sample_fixed_point`` (NUTS, 4 chains) to
converge, from f_0 = 0 and from a short mean-field Langevin run (``start=``), then the time to sample G[f*] at the fixed point until R-hat < 1.01 and bulk
ESS >= 400 for every coordinate (draws per chain doubled from 100 until both hold).

Usage: python bench/fixed_point.py [--d 8 --p 512 --beta 50] [--smoke]
"""

from __future__ import annotations

import argparse
import pathlib
import time

import jax
import numpy as np
from arviz_stats import ess, rhat

import mfsde

ROOT = pathlib.Path(__file__).resolve().parents[1]
neuron = mfsde.load_model(ROOT / "models" / "single_neuron.py")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d", type=int, default=8)
    ap.add_argument("--p", type=int, default=512)
    ap.add_argument("--beta", type=float, default=50.0)
    ap.add_argument("--kernel", default="nuts")
    ap.add_argument("--start", type=float, nargs=3, default=(512, 20.0, 0.1), metavar=("N", "T1", "DT0"),
                    help="the Langevin start: particles, time, step")
    ap.add_argument("--no-gibbs", action="store_true", help="skip sampling G[f*] to R-hat < 1.01")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.d, args.p = 2, 32
    x, y = neuron.make_data(jax.random.key(0), num_data=args.p, dim=args.d)
    fe = mfsde.FreeEnergy(neuron.make_unit(1.0, 1.0), x, y, beta=args.beta)
    warm, draws = (50, 50) if args.smoke else (500, 500)
    max_iter = 4 if args.smoke else 12
    lang_n, lang_t1, lang_dt0 = (64, 2.0, 0.05) if args.smoke else (int(args.start[0]), *args.start[1:])
    print(f"device: {jax.devices()[0].device_kind}; planted neuron d={args.d} (D={fe.dim}), P={args.p}, "
          f"beta={args.beta}, kernel={args.kernel}; {warm} warmup + {draws} draws x 4 chains a round")

    def langevin_start(seed):
        p0 = fe.prior_sample(jax.random.key(seed), lang_n)
        traj = mfsde.langevin(fe, jax.random.key(seed + 1), p0, t1=lang_t1, dt0=lang_dt0, diagnostics=False,
                              progress=False)
        return jax.block_until_ready(traj.particles)

    def fixed_point(start):
        return mfsde.sample_fixed_point(fe, jax.random.key(1), num_chains=4, num_warmup=warm, num_samples=draws,
                                        kernel=args.kernel, max_iter=max_iter, start=start)

    # before (f_0 = 0) and after (f_0 from a short Langevin run), each twice: the first call
    # compiles, the second is the warm time
    for label in ("first call, compilation included", "second call"):
        t = time.perf_counter()
        fp = fixed_point(None)
        t_fp = time.perf_counter() - t
        print(f"  [{label}] f_0 = 0: {len(fp.residuals)} MCMC rounds, {t_fp:.1f} s, converged={fp.converged}, "
              f"relative residuals {np.round(fp.residuals, 3).tolist()}")
        t = time.perf_counter()
        cloud = langevin_start(7)
        t_l = time.perf_counter() - t
        t = time.perf_counter()
        fp_l = fixed_point(cloud)
        t_fl = time.perf_counter() - t
        print(f"  [{label}] f_0 from langevin (N={lang_n}, t1={lang_t1:g}, dt0={lang_dt0:g}): "
              f"{len(fp_l.residuals)} MCMC rounds, {t_fl:.1f} s + {t_l:.1f} s Langevin = {t_fl + t_l:.1f} s, "
              f"converged={fp_l.converged}, relative residuals {np.round(fp_l.residuals, 3).tolist()}")
    print(f"rounds: {len(fp.residuals)} -> {len(fp_l.residuals)}; warm wall time {t_fp:.1f} s -> {t_fl + t_l:.1f} s "
          f"(x{(t_fl + t_l) / t_fp:.2f})")
    if args.no_gibbs:
        return
    n = 100
    init = fp.samples[:, -1]
    while True:
        t = time.perf_counter()
        gs = mfsde.sample_gibbs(fe, jax.random.key(n), fp.output, init, num_warmup=warm, num_samples=n,
                                kernel=args.kernel)
        samples = np.asarray(gs.samples)
        elapsed = time.perf_counter() - t
        r, e = float(np.max(rhat(samples))), float(np.min(ess(samples)))
        print(f"  G[f*] with {n} draws/chain: {elapsed:.1f} s, max R-hat {r:.4f}, min bulk ESS {e:.0f}")
        if (r < 1.01 and e >= 400) or n >= (200 if args.smoke else 12800):
            break
        n *= 2
    print(f"R-hat < 1.01 and bulk ESS >= 400: {'reached' if r < 1.01 and e >= 400 else 'NOT reached'} "
          f"with {n} draws per chain in {elapsed:.1f} s (one run, compilation included)")


if __name__ == "__main__":
    main()
