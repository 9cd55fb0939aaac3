"""Benchmark: W2 between two point clouds, POT (``mfsde.w2``) against ott-jax (issue 15, part 4).

Clouds p ~ N(0, I), q ~ N(0.3·1, 1.2² I) in D = 17, n points each. For each n prints, with
their wall times (ott-jax's include compilation, one jit per size):

- exact W2 by POT's network simplex (``mfsde.w2(method="exact")``), n ≤ 3000: the reference;
- ``mfsde.w2(method="sinkhorn")``: POT's debiased Sinkhorn divergence (linear term
  ⟨γ, C⟩ of each plan), ε = 1% of the mean squared distance, n ≤ 10⁴;
- ott-jax's ``sinkhorn_divergence`` on ``PointCloud``s with the same ε (its terms include
  the entropy, so it approaches W2² from below where POT's approaches it from above), if
  ott-jax is installed (it is not a dependency of mfsde). ``--batch B`` uses ott's online
  (lazy, no n × n matrix) geometry, the only way to 10⁵ points: on ott-jax 0.6.0 with
  jax ≥ 0.9 it raises ``AttributeError: ... is_vmappable`` (ott-jax/ott#700, fixed on
  their main after 0.6.0).

Usage: python bench/transport.py [--n 1000 3000 10000] [--batch B] [--smoke]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

import mfsde

D = 17


def clouds(n: int, seed: int):
    r = np.random.default_rng(seed)
    return r.normal(size=(n, D)), 0.3 + 1.2 * r.normal(size=(n, D))


def ott_w2(p, q, reg: float, batch: int | None) -> tuple[float, int]:
    import jax
    import jax.numpy as jnp
    from ott.geometry import pointcloud
    from ott.tools import sinkhorn_divergence

    @jax.jit
    def divergence(p, q):
        div, out = sinkhorn_divergence.sinkhorn_divergence(pointcloud.PointCloud, p, q, epsilon=reg, batch_size=batch,
                                                           solve_kwargs=dict(threshold=1e-3, max_iterations=5000))
        return div, out.n_iters[0]

    div, iters = divergence(jnp.asarray(p, jnp.float32), jnp.asarray(q, jnp.float32))
    return math.sqrt(max(float(div), 0.0)), int(iters)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[1000, 3000, 10000])
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.n = [200]
    try:
        import ott  # noqa: F401
        have_ott = True
    except ImportError:
        have_ott = False
        print("ott-jax is not installed: POT only")
    print(f"D = {D}; p ~ N(0, I), q ~ N(0.3, 1.2^2 I); eps = 1% of the mean squared distance")
    for n in args.n:
        p, q = clouds(n, n)
        mean_sq = (p**2).sum(1).mean() + (q**2).sum(1).mean() - 2 * p.mean(0) @ q.mean(0)
        reg = 0.01 * float(mean_sq)
        row, exact = [f"n = {n:6d}"], None
        if n <= 3000:
            t = time.perf_counter()
            exact = mfsde.w2(p, q, method="exact")
            row.append(f"exact {exact:.4f} ({time.perf_counter() - t:.1f} s)")

        def err(w):
            return "" if exact is None else f", {100 * (w / exact - 1):+.2f}% vs exact"

        if n <= 10000:
            t = time.perf_counter()
            w = mfsde.w2(p, q, method="sinkhorn", reg=reg)
            row.append(f"POT sinkhorn {w:.4f} ({time.perf_counter() - t:.1f} s{err(w)})")
        if have_ott:
            t = time.perf_counter()
            try:
                w, iters = ott_w2(p, q, reg, args.batch)
                row.append(f"ott-jax {w:.4f} ({time.perf_counter() - t:.1f} s, {iters} iterations{err(w)})")
            except AttributeError as e:
                row.append(f"ott-jax failed: {e}")
        print(" | ".join(row), flush=True)


if __name__ == "__main__":
    main()
