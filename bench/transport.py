"""Benchmark: W2 between two point clouds; ott-jax (``mfsde.w2``'s Sinkhorn) against POT
(issue 15, part 4).

Clouds p ~ N(0, I), q ~ N(0.3·1, 1.2² I) in D = 17, n points each, ε = 1% of the mean
squared distance. For each n, in one run, with wall times:

- exact W2 by POT's network simplex (``mfsde.w2(method="exact")``), n ≤ 3000: the reference;
- ``mfsde.w2(method="sinkhorn")``: the debiased Sinkhorn divergence of the transport cost,
  S = ⟨γ_pq, C⟩ − ½⟨γ_pp, C⟩ − ½⟨γ_qq, C⟩, solved by ott-jax in float32 (first call, with
  its compilation, and a second call);
- the same estimator by POT (``ot.bregman.empirical_sinkhorn_divergence``, float64, stopThr
  1e-5; mfsde's Sinkhorn until issue 15), n ≤ 10⁴ (POT's lazy mode beyond 12000 points
  is slower still);
- ``--online`` forces ott-jax's online geometry (rows in blocks, no n × n array, the only
  way to 10⁵ points in memory) and prints its seconds per Sinkhorn iteration, from which
  the 10⁵-point time is extrapolated (the work per iteration is n²).

Usage: python bench/transport.py [--n 1000 3000 10000] [--online] [--smoke]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

import mfsde
from mfsde._ott import ott_modules
from mfsde.diagnostics import _divergence

D = 17


def clouds(n: int, seed: int):
    r = np.random.default_rng(seed)
    return r.normal(size=(n, D)), 0.3 + 1.2 * r.normal(size=(n, D))


def pot_w2(p, q, reg: float) -> float:
    import ot

    s = ot.bregman.empirical_sinkhorn_divergence(p, q, reg, metric="sqeuclidean", numIterMax=10000, stopThr=1e-5)
    return math.sqrt(max(float(s), 0.0))


def timed(f):
    t = time.perf_counter()
    out = f()
    return out, time.perf_counter() - t


def online_seconds_per_iteration(n: int, rows: int, iterations: int = 10) -> float:
    """Seconds per Sinkhorn iteration (both half-steps) of ott-jax's online geometry at n
    points, from a fixed number of iterations (the second call, compiled)."""
    import jax
    import jax.numpy as jnp

    ott = ott_modules()
    pointcloud, linear = ott.pointcloud, ott.linear
    p, q = (jnp.asarray(c, jnp.float32) for c in clouds(n, n))

    @jax.jit
    def run(p, q):
        geom = pointcloud.PointCloud(p, q, epsilon=1.0, batch_size=rows)
        return linear.solve(geom, threshold=0.0, min_iterations=iterations, max_iterations=iterations).f

    jax.block_until_ready(run(p, q))
    _, s = timed(lambda: jax.block_until_ready(run(p, q)))
    return s / iterations


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[1000, 3000, 10000, 20000])
    ap.add_argument("--online", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.n = [300]
    print(f"D = {D}; p ~ N(0, I), q ~ N(0.3, 1.2^2 I); eps = 1% of the mean squared distance")
    for n in args.n:
        p, q = clouds(n, n)
        mean_sq = (p**2).sum(1).mean() + (q**2).sum(1).mean() - 2 * p.mean(0) @ q.mean(0)
        reg = 0.01 * float(mean_sq)
        row, exact = [f"n = {n:6d}"], None
        if n <= 3000:
            exact, s = timed(lambda: mfsde.w2(p, q, method="exact"))
            row.append(f"exact {exact:.4f} ({s:.1f} s)")

        def err(w):
            return "" if exact is None else f", {100 * (w / exact - 1):+.2f}% vs exact"

        w, s1 = timed(lambda: mfsde.w2(p, q, method="sinkhorn", reg=reg))
        _, s2 = timed(lambda: mfsde.w2(p, q, method="sinkhorn", reg=reg))
        row.append(f"ott-jax {w:.4f} ({s1:.1f} s first, {s2:.1f} s again{err(w)})")
        if n <= 10000:
            w_pot, s = timed(lambda: pot_w2(p, q, reg))
            row.append(f"POT {w_pot:.4f} ({s:.1f} s{err(w_pot)}; ott-jax/POT {w / w_pot - 1:+.2e}, "
                       f"time POT/ott-jax {s / s2:.1f}x)")
        print(" | ".join(row), flush=True)
    if args.online:
        for n in ([2000] if args.smoke else [10000, 20000]):
            rows = max(1, _divergence._OT_BLOCK_ENTRIES // n)
            s = online_seconds_per_iteration(n, rows)
            print(f"online geometry, n = {n}, {rows} rows a block: {s:.2f} s per iteration; "
                  f"n = 10^5 by n²: {s * (1e5 / n) ** 2:.0f} s per iteration", flush=True)


if __name__ == "__main__":
    main()
