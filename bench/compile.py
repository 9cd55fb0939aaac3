"""A sweep's compile cost: β × dt0 × data values on the README's problem, as ratios.

The README example (tanh unit, d = 16, P = 1024, N = 512, t1 = 20) run over a grid of
β, dt0 and two target vectors of the same shape, each a fresh ``FreeEnergy``, the way a
study sweeps. Each call of the sweep is repeated at once with the same arguments (the same
objects, which every version reuses compiled), so the repeat costs the dynamics alone.
Printed: the sweep's wall time, the repeats' (its run time), sweep/run (1 is compile-free),
the first call alone, and the programs lowered in the sweep (``jax.monitoring``'s lowering event, counted here so that the script also runs
against an older checkout: ``PYTHONPATH=old/checkout python bench/compile.py``).

Run it three ways for the table in bench/README.md: cold (``MFSDE_COMPILATION_CACHE=0``),
cold in a fresh cache folder, then again with that folder warm (a second process).

    python bench/compile.py [--smoke] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from jax._src import monitoring
from jax._src.dispatch import JAXPR_TO_MLIR_MODULE_EVENT

_lowered: list[str] = []
monitoring.register_event_duration_secs_listener(
    lambda event, duration, **kw: _lowered.append(kw.get("fun_name", "?")) if event == JAXPR_TO_MLIR_MODULE_EVENT else None)

import mfsde  # noqa: E402  (after the listener: count what importing compiles too)


def unit(x):
    d = x.shape[-1]
    a = numpyro.sample("a", dist.Normal(0.0, 2.0))
    w = numpyro.sample("w", dist.Normal(0.0, 1 / d**0.5).expand([d]).to_event(1))
    return a * jnp.tanh(x @ w)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="2 x 2 x 1 sweep at N = 64, P = 128")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    n, p = (64, 128) if args.smoke else (512, 1024)
    betas = [100.0, 200.0] if args.smoke else [50.0, 100.0, 200.0, 400.0, 800.0]
    dt0s = [0.05, 0.04] if args.smoke else [0.05, 0.04, 0.025, 0.02]
    x = jax.random.normal(jax.random.key(0), (p, 16))
    targets = [jnp.tanh(x[:, 0])] if args.smoke else [jnp.tanh(x[:, 0]), jnp.tanh(x[:, 0] - x[:, 1])]
    particles = mfsde.FreeEnergy(unit, x, targets[0], beta=betas[0]).prior_sample(jax.random.key(1), n)

    def call(fe, dt0):
        t = time.perf_counter()
        traj = mfsde.langevin(fe, jax.random.key(2), particles, t1=20.0, dt0=dt0, progress=False)
        jax.block_until_ready(traj.particles)
        return time.perf_counter() - t

    first, second, lowered = [], [], 0
    for y in targets:
        for beta in betas:
            fe = mfsde.FreeEnergy(unit, x, y, beta=beta)
            for dt0 in dt0s:
                before = len(_lowered)
                first.append(call(fe, dt0))
                lowered += len(_lowered) - before
                second.append(call(fe, dt0))
    out = dict(runs=len(first), sweep_s=sum(first), run_s=sum(second),
               ratio=sum(first) / sum(second), ratio_after_first=sum(first[1:]) / sum(second[1:]), first_call_s=first[0], repeated_call_s=second[0],
               programs_lowered_first_pass=lowered, version=getattr(mfsde, "__version__", "?"),
               cache=str(jax.config.jax_compilation_cache_dir), sizes=dict(N=n, P=p, d=16))
    print(f"sweep of {len(first)} langevin runs ({len(targets)} targets x {len(betas)} beta x {len(dt0s)} dt0), "
          f"N = {n}, P = {p}")
    print(f"  sweep    {sum(first):8.2f} s   (first call {first[0]:.2f} s, last {first[-1]:.2f} s; {lowered} programs "
          f"lowered)")
    print(f"  repeats  {sum(second):8.2f} s   (the dynamics alone; a call {second[0]:.2f} s)")
    print(f"  sweep / run = {out['ratio']:.2f}   (without the first call: "
          f"{sum(first[1:]) / sum(second[1:]):.2f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
