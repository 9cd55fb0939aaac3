"""Benchmark: one-pass SGD steps per second (MMN's isotropic mixture) vs a dense matmul,
and the reduced dynamics' time to t = 40 (isotropic r, at d = ∞ and exact at finite d;
anisotropic (r₁, r₂); planted (a, s, r)), in one run.

SGD at N = 800 units, d = 320, minibatch B: each step is a forward (N, d) @ (d, B) and a
backward of the same shape; the reference is the GEMM pair (N, d) @ (d, B) and
(N, B) @ (B, d) timed in a lax.fori_loop of the same length. Also timed, as lax.scan loops
of the same length: the SGD step (``SGDStep``) with a fixed minibatch (the gradient's own
cost), and the step before issue 15, whose minibatch XLA fused into its consumers (no
``optimization_barrier``) and recomputed for every unit. The reductions run
``mfsde.langevin`` (β = ∞) on 10⁴ particles with dt0 = 0.01: the anisotropic one is the talk's
ReLU run (d = 320, s0 = 60, Δ = 0.5, σ = max(t, 0) − 2; tutorials/mmn_anisotropic.py), the
finite-d one the exact isotropic reduction at d = 40 (64 radii per class).

Usage: python bench/sgd.py [--n 800 --d 320 --batch 1 --steps 20000] [--smoke]
"""

from __future__ import annotations

import argparse
import pathlib
import time

import jax
import jax.numpy as jnp

import mfsde
from mfsde.dynamics import SGDStep

ROOT = pathlib.Path(__file__).resolve().parents[1]
gm = mfsde.load_model(ROOT / "models" / "gaussian_mixture.py")
sn = mfsde.load_model(ROOT / "models" / "single_neuron.py")


def gemm_pair(n, d, b, steps):
    @jax.jit
    def run(w, x):
        def body(i, w):
            h = w @ x.T                      # (N, B)
            return w - 1e-6 * (h @ x)        # (N, d)

        return jax.lax.fori_loop(0, steps, body, w)

    return run


class StepBefore(SGDStep):
    """The SGD step as it was before issue 15: the minibatch not materialised."""

    def batch(self, key):
        return self.sampler(key, self.batch_size)


def scanned(step, steps, fixed_batch=None):
    """K SGD steps in a plain lax.scan (no driver, no saving)."""
    @jax.jit
    def run(key, th):
        def body(th, k):
            if fixed_batch is None:
                return step(jax.random.fold_in(key, k), k * step.step_size, th), None
            return th - step.step_size * step.fe.grad_potential_and_output(th, *fixed_batch)[0], None

        return jax.lax.scan(body, th, jnp.arange(steps))[0]

    return run


def timed(fn, repeats: int = 1):
    """(best seconds of ``repeats`` calls after the first, its result); the first compiles."""
    jax.block_until_ready(fn())
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        out = jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t)
    return best, out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=800)
    ap.add_argument("--d", type=int, default=320)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--radii", type=int, default=10_000)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.n, args.d, args.steps, args.radii = 32, 16, 200, 256
    fe = mfsde.FreeEnergy.from_sampler(gm.make_unit(args.d), gm.make_sampler(args.d, 0.8), float("inf"),
                                       jax.random.key(0), num_eval=1024)
    w0 = fe.prior_sample(jax.random.key(1), args.n)
    t_sgd, _ = timed(lambda: mfsde.sgd(fe, jax.random.key(2), w0, num_steps=args.steps, step_size=0.01, batch_size=args.batch,
                                       save_every=args.steps, progress=False).particles, repeats=3)
    x = jax.random.normal(jax.random.key(3), (args.batch, args.d))
    ref = gemm_pair(args.n, args.d, args.batch, args.steps)
    t_mm, _ = timed(lambda: ref(w0, x), repeats=3)
    print(f"device: {jax.devices()[0].device_kind}; SGD N={args.n} d={args.d} B={args.batch}, {args.steps} steps")
    print(f"sgd: {args.steps / t_sgd:.0f} steps/s; GEMM pair: {args.steps / t_mm:.0f} steps/s; "
          f"sgd/gemm time ratio {t_sgd / t_mm:.2f} (incl. sampling the minibatch and one risk save)")
    unit_schedule = lambda t: 1.0  # noqa: E731
    for label, cls, fixed in (("SGD step in a lax.scan", SGDStep, None),
                              ("the step before issue 15 (minibatch not materialised)", StepBefore, None),
                              ("gradient only, one fixed minibatch", SGDStep, fe.sampler(jax.random.key(7), args.batch))):
        step = cls(fe, 0.01, args.batch, False, False, unit_schedule, fe.sampler)
        run = scanned(step, args.steps, fixed)
        t_scan, _ = timed(lambda: run(jax.random.key(2), w0), repeats=3)  # noqa: B023
        print(f"  {label}: {args.steps / t_scan:.0f} steps/s (sgd / this = {t_sgd / t_scan:.2f})")
    t1 = 2.0 if args.smoke else 40.0
    reductions = [
        (f"reduced dynamics, {args.radii} radii", gm.reduced_problem(0.8),
         gm.init_radii(jax.random.key(4), args.radii, args.d), 0.01),
        (f"reduced dynamics exact at d = 40, {args.radii} radii, 2 x 64 data radii", gm.reduced_problem(0.8, dim=40),
         gm.init_radii(jax.random.key(4), args.radii, 40), 0.01),
        (f"anisotropic (r1, r2) reduction, ReLU - 2, {args.radii} particles",
         gm.anisotropic_reduced_problem(0.5, 60 / 320, gm.PiecewiseLinear(-2.0, (1.0,), (0.0,))),
         gm.init_block_radii(jax.random.key(8), args.radii, 320, 60), 0.01),
        (f"planted (a, s, r) reduction, ReLU, {args.radii} particles, 512 quantile nodes", sn.reduced_problem(sn.relu),
         sn.init_reduced(jax.random.key(6), args.radii, 16), 0.05),
    ]
    for label, red, start, dt0 in reductions:
        elapsed, traj = timed(lambda: mfsde.langevin(red, jax.random.key(5), start, t1=t1, dt0=dt0,  # noqa: B023
                                                     diagnostics=False))
        print(f"{label}, t = 0..{t1:g} (dt0 {dt0}): {elapsed:.2f} s; risk "
              f"{float(traj.observables['risk'][0]):.3f} -> {float(traj.observables['risk'][-1]):.4f}")


if __name__ == "__main__":
    main()
