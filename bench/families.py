"""Benchmark: the step of every dynamics family through the one driver, against a dense GEMM
pair of the same shape, in one run.

The planted tanh neuron (models/single_neuron.py) at N particles, P points, d inputs
(D = d + 2), float32. Each family runs ``--steps`` steps with no in-run diagnostics, after
one call of the same structure (so no compile is timed); the best of ``--repeats`` runs,
divided by the steps, is its step time. The reference is one forward GEMM (N, D)·(D, P)
and one backward (P, N)ᵀ·(P, D) pair, the least a drift evaluation can cost. Only public
API is used, so the same script times another checkout (``PYTHONPATH=<old tree>``): issue
33's before/after table in bench/README.md comes from running it on both, alternately.

Usage: python bench/families.py [--n 1024 --p 1024 --d 32 --steps 200 --repeats 3] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

import mfsde

ROOT = pathlib.Path(__file__).resolve().parents[1]
neuron = mfsde.load_model(ROOT / "models" / "single_neuron.py")


def best_of(fn, repeats):
    jax.block_until_ready(fn())
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--p", type=int, default=1024)
    ap.add_argument("--d", type=int, default=32)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.n, args.p, args.d, args.steps, args.repeats = 32, 32, 4, 10, 1
    n, p, d, k = args.n, args.p, args.d, args.steps
    x, y = neuron.make_data(jax.random.key(0), num_data=p, dim=d)
    fe = mfsde.FreeEnergy(neuron.make_unit(1.0, 1.0), x, y, beta=20.0)
    fe_flow = mfsde.FreeEnergy(neuron.make_unit(1.0, 1.0), x, y, beta=math.inf)
    p0 = fe.prior_sample(jax.random.key(1), n)
    key = jax.random.key(2)
    h = 0.01
    quiet = dict(progress=False)
    runs = {
        "langevin (LM)": lambda: mfsde.langevin(fe, key, p0, t1=k * h, dt0=h, diagnostics=False, **quiet).particles,
        "sgd (full batch)": lambda: mfsde.sgd(fe, key, p0, num_steps=k, step_size=h, **quiet).particles,
        "wfr reweighting, beta = inf": lambda: mfsde.wfr(fe_flow, key, p0, t1=k * h, dt0=h, alpha=1.0,
                                                          diagnostics=False, **quiet).particles.theta,
        "wfr clone, finite beta (KDE)": lambda: mfsde.wfr(fe, key, p0, t1=k * h, dt0=h, alpha=1.0, birth_death="clone",
                                                           diagnostics=False, **quiet).particles.theta,
        "mckean_vlasov": lambda: mfsde.mckean_vlasov(fe, key, n, dt0=1.0 / k, **quiet).particles,
    }
    dims = fe.dim
    a, b = jnp.ones((n, dims), jnp.float32), jnp.ones((dims, p), jnp.float32)
    gemm = jax.jit(lambda a, b: (a @ b, (a @ b).T @ a))
    t_gemm = best_of(lambda: gemm(a, b), max(args.repeats, 5) * 10)
    print(f"device: {jax.devices()[0].device_kind}; planted neuron d={d} (D={dims}), N={n}, P={p}, {k} steps; "
          f"mfsde from {pathlib.Path(mfsde.__file__).parent}")
    print(f"dense GEMM pair (N, D)·(D, P) and back: {t_gemm * 1e3:.3f} ms")
    out = {"gemm_ms": t_gemm * 1e3}
    for name, fn in runs.items():
        step = best_of(fn, args.repeats) / k
        out[name] = step * 1e3
        print(f"  {name:32s} {step * 1e3:8.3f} ms/step  = {step / t_gemm:6.2f} GEMM pairs")
    print(json.dumps(out))
    assert all(np.isfinite(v) for v in out.values())


if __name__ == "__main__":
    main()
