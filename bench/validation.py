"""Benchmark: the finite-N ground truth and the validators built on it.

Prints, in one run:

- the wall time of ``mfsde.sample_particle_posterior`` (NUTS with window adaptation, 4
  chains) on the planted neuron at N = 256 particles, D = 17 (d = 16), and its effective
  samples per second: the smallest bulk ESS (ArviZ) over the risk R(f_N), (1/N) Σ‖θ_i‖²
  and the particle mean and mean square of the output weight a;
- one Langevin step with Leimkuhler–Matthews relative to Euler–Maruyama (same drift,
  same sizes, ``diagnostics=False``), both through ``mfsde.langevin``;
- with ``--rates``: the verdicts of ``check_fixed_point`` and of the convergence verdict
  (``mfsde.convergence``, what ``summary`` prints) on three kinds of run of a small planted
  neuron (d = 4, P = 256, N = 256, β = 50, 2 replicates each):
  stationary (started from exact draws of p_N, LM at dt0 = 0.2 to t = 2000), stopped early
  (overdispersed prior starts, t = 20) and steps too large (Euler at dt0 = 0.5 and 1.0,
  dt0·λ_max ≈ 0.55 and 1.1, from stationary starts, t = 2400). Reports the false failure
  rate on the first and the power (rate of FAIL, with the cause it names) on the others.

Usage: python bench/validation.py [--rates | --rates-only] [--repeats 20] [--smoke]
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import time

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from arviz_stats import ess

import mfsde
from langevin import timeit  # bench/ is on the path when a bench script runs

ROOT = pathlib.Path(__file__).resolve().parents[1]
neuron = mfsde.load_model(ROOT / "models" / "single_neuron.py")


def bench_posterior(n, d, p, beta, warmup, draws):
    x, y = neuron.make_data(jax.random.key(0), num_data=p, dim=d)
    fe = mfsde.FreeEnergy(neuron.unit, x, y, beta=beta)
    t = time.perf_counter()
    post = mfsde.sample_particle_posterior(fe, jax.random.key(1), n, num_chains=4, num_warmup=warmup,
                                           num_samples=draws)
    jax.block_until_ready(post.samples)
    wall = time.perf_counter() - t
    th = post.samples
    a = th[..., fe.unit.site_indices()["a"]]
    stats = {"risk": jax.vmap(jax.vmap(fe.risk))(th), "mean_sq_norm": jnp.mean(jnp.sum(th**2, -1), -1),
             "mean[a]": a.mean(-1), "mean_sq[a]": jnp.mean(a**2, -1)}
    ess_min = min(float(ess(np.asarray(v, np.float64))) for v in stats.values())
    steps = float(np.mean(np.asarray(post.num_integration_steps)))
    print(f"sample_particle_posterior: planted neuron N={n}, D={fe.dim} ({n * fe.dim} coordinates), P={p}, "
          f"beta={beta:g}, 4 chains x ({warmup} warmup + {draws} draws)")
    print(f"  wall {wall:.1f} s (compilation included); mean {steps:.1f} leapfrog steps/draw, acceptance "
          f"{float(np.mean(np.asarray(post.acceptance))):.2f}, {int(np.sum(np.asarray(post.diverging)))} divergent")
    print(f"  min bulk ESS over risk, mean_sq_norm, mean[a], mean_sq[a]: {ess_min:.0f} -> {ess_min / wall:.2f} ESS/s")
    return dict(wall_s=wall, ess_min=ess_min, ess_per_s=ess_min / wall)


def bench_step(n, p, d, steps, repeats):
    x, y = neuron.make_data(jax.random.key(0), num_data=p, dim=d)
    fe = mfsde.FreeEnergy(neuron.unit, x, y, beta=200.0)
    p0 = fe.prior_sample(jax.random.key(1), n)
    dt = 0.1

    def runner(solver):
        @jax.jit
        def run(key, p0):
            return mfsde.langevin(fe, key, p0, t1=steps * dt, dt0=dt, ts=[steps * dt], solver=solver,
                                  progress=False, diagnostics=False).particles

        return run

    euler, lm = runner(diffrax.Euler()), runner(mfsde.LeimkuhlerMatthews())
    # interleaved, best of two medians each: absolute times drift on a shared machine
    times = [timeit(fn, jax.random.key(2), p0, repeats=repeats) / steps for fn in (euler, lm, euler, lm)]
    t_e, t_lm = min(times[0::2]), min(times[1::2])
    print(f"one Langevin step, N={n}, P={p}, d={d}: Euler {t_e * 1e3:.3f} ms, Leimkuhler-Matthews {t_lm * 1e3:.3f} ms"
          f" -> LM/Euler = {t_lm / t_e:.3f}")
    return dict(euler_s=t_e, lm_s=t_lm, lm_over_euler=t_lm / t_e)


def bench_rates(repeats, smoke, kinds_only=None):
    """False-failure and power rates of check_fixed_point and of the convergence verdict."""
    d, p, n, beta = (2, 32, 32, 20.0) if smoke else (4, 256, 256, 50.0)
    x, y = neuron.make_data(jax.random.key(0), num_data=p, dim=d)
    fe = mfsde.FreeEnergy(neuron.make_unit(1.0, 1.0), x, y, beta=beta)
    t_stat, t_early, t_hot = (20.0, 2.0, 20.0) if smoke else (2000.0, 20.0, 2400.0)
    chains = 4
    per_chain = -(-2 * repeats // chains)
    post = mfsde.sample_particle_posterior(fe, jax.random.key(1), n, num_chains=chains,
                                           num_warmup=50 if smoke else 500, num_samples=per_chain,
                                           thinning=2 if smoke else 50)
    # interleave chains so that the two replicates of a run come from different chains
    starts = jnp.swapaxes(post.samples, 0, 1).reshape(-1, n, fe.dim)
    mcmc = dict(num_warmup=60, num_samples=60) if smoke else {}
    # every save's Stein residual (not the default budget): these rates are the check's power
    # with the in-run time-step test
    kinds = {
        "stationary": lambda keys, s, r: mfsde.langevin(fe, keys, s, t1=t_stat, dt0=0.2, progress=False,
                                                        diagnostics=True),
        "stopped early": lambda keys, s, r: mfsde.langevin(
            fe, keys, mfsde.overdispersed_starts(fe, jax.random.key(500 + r), 2, n), t1=t_early, dt0=0.2,
            progress=False, diagnostics=True),
        "step too large": lambda keys, s, r: mfsde.langevin(fe, keys, s, t1=t_hot, dt0=0.5, solver=diffrax.Euler(),
                                                            progress=False, diagnostics=True),
        "step far too large": lambda keys, s, r: mfsde.langevin(fe, keys, s, t1=t_hot, dt0=1.0,
                                                                solver=diffrax.Euler(), progress=False,
                                                                diagnostics=True),
    }
    print(f"verdict rates: planted neuron d={d}, P={p}, N={n}, beta={beta:g}, {repeats} runs of 2 replicates per kind")
    out = {}
    only = set(kinds_only) if kinds_only else set(kinds)
    for kind, run in kinds.items():
        if kind not in only:
            continue
        causes, conv_ok, start = collections.Counter(), 0, time.perf_counter()
        for r in range(repeats):
            keys = jax.random.split(jax.random.key(1000 * (list(kinds).index(kind) + 1) + r), 2)
            traj = run(keys, starts[2 * r:2 * r + 2], r)
            check = mfsde.check_fixed_point(fe, jax.random.key(r), traj, **mcmc)
            causes[check.cause] += 1
            conv_ok += bool(check.convergence.converged)
        fail_rate = 1 - (causes["passes"] + causes["finite-N"]) / repeats
        label = "false FAIL rate" if kind == "stationary" else "power (FAIL rate)"
        conv_label = "false 'not converged'" if kind == "stationary" else "'not converged'"
        conv_rate = 1 - conv_ok / repeats
        print(f"  {kind:18s} check_fixed_point {label} {fail_rate:.2f}"
              f" (causes {dict(causes)}); convergence {conv_label} {conv_rate:.2f}; "
              f"{time.perf_counter() - start:.0f} s")
        out[kind] = dict(causes=dict(causes), fail_rate=fail_rate, not_converged_rate=conv_rate)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", action="store_true", help="measure the verdicts' false-failure and power rates")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--rates-only", action="store_true", help="skip the timings")
    ap.add_argument("--kinds", nargs="*", help="only these kinds of run (with --rates)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (used by the test suite)")
    args = ap.parse_args()
    print(f"device: {jax.devices()[0].device_kind}")
    if args.smoke:
        bench_posterior(16, 2, 32, 20.0, 50, 50)
        bench_step(64, 64, 4, 5, 1)
        if args.rates:
            bench_rates(1, smoke=True)
        return
    if not args.rates_only:
        bench_posterior(256, 16, 512, 50.0, 500, 500)
        bench_step(512, 1024, 16, 100, 5)
        bench_step(4096, 4096, 64, 20, 3)
    if args.rates or args.rates_only:
        bench_rates(args.repeats, smoke=False, kinds_only=args.kinds)


if __name__ == "__main__":
    main()
