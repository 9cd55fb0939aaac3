"""Benchmark: one Schrödinger-bridge step vs one Langevin step at the same N (same run).

A bridge drift evaluation estimates E_Q[∇Ψ] for every particle from n_inner draws (Ψ and
∇Ψ at N·n_inner points) plus ∇Ψ(w) for the Gaussian proposal's centre; a Langevin drift is
f_ρ and ∇Ψ at N points. Prints both times, their ratio and the ratio per inner point, then
the peak memory of one bridge step at N = 10⁴, n_inner = 64, P = 4096 (XLA's buffer
accounting of the compiled step and the process's max RSS, in a fresh process).

Then the transport map and the value function (issue 34) on the same problem: fitting
``transport_map`` to M target points (ott-jax Sinkhorn, M prior draws) against one
debiased Sinkhorn W2 of the same clouds (``mfsde.w2``, three Sinkhorn solves); applying
T to M points and its Jacobian at 1000, against the dense (M, M) x (M, D) GEMM of the
barycentric projection; the value function alone and the whole Gibbs flow at N points
against the bridge drift there (the same inner draws).

Usage: python bench/tzen_raginsky.py [--n 2000 --p 4096 --d 16 --n-inner 64 --m 4000] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import mfsde
from mfsde.dynamics import BridgeDrift, ControlledState, LangevinDrift, gaussian_prior

ROOT = pathlib.Path(__file__).resolve().parents[1]
neuron = mfsde.load_model(ROOT / "models" / "single_neuron.py")


def problem(n, p, d, n_inner):
    x, y = neuron.make_data(jax.random.key(0), num_data=p, dim=d)
    fe = mfsde.FreeEnergy(neuron.make_unit(1.0, 1.0), x, y, beta=20.0)
    mean, var = gaussian_prior(fe)
    pool = fe.prior_sample(jax.random.key(1), 4096)
    particles = fe.prior_sample(jax.random.key(2), n)
    output = fe.output(particles)
    chunk = max(1, (1 << 14 if jax.default_backend() == "cpu" else 1 << 18) // n_inner)
    bridge = BridgeDrift(fe, output, pool, jnp.asarray(0.0), jnp.asarray(mean, x.dtype), jnp.asarray(var, x.dtype),
                         jax.random.key(3), n_inner // 4, n_inner // 4, chunk)
    state = ControlledState(particles, jnp.zeros(n, x.dtype))
    return fe, bridge, particles, state


def timeit(fn, *args, repeats=3):
    jax.block_until_ready(fn(*args))
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return best


def memory_child(n, p, d, n_inner):
    fe, bridge, particles, state = problem(n, p, d, n_inner)
    step = jax.jit(lambda b, t, y: jax.tree.map(lambda a, da: a + 0.01 * da, y, b(t, y)))
    compiled = step.lower(bridge, 0.3, state).compile()
    ma = compiled.memory_analysis()
    t = time.perf_counter()
    jax.block_until_ready(compiled(bridge, 0.3, state))
    out = dict(n=n, p=p, d=d, n_inner=n_inner, temp_bytes=ma.temp_size_in_bytes,
               max_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
               step_s=time.perf_counter() - t, dense_bytes=n * n_inner * p * 4)
    if jax.default_backend() == "gpu":
        out["gpu_peak_bytes"] = jax.devices()[0].memory_stats().get("peak_bytes_in_use")
    print(json.dumps(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--p", type=int, default=4096)
    ap.add_argument("--d", type=int, default=16)
    ap.add_argument("--n-inner", type=int, default=64)
    ap.add_argument("--memory-n", type=int, default=10_000)
    ap.add_argument("--m", type=int, default=4000, help="target points of the transport map")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--memory-child", nargs=4, type=int)
    args = ap.parse_args()
    if args.memory_child:
        return memory_child(*args.memory_child)
    if args.smoke:
        args.n, args.p, args.d, args.n_inner, args.memory_n, args.m = 64, 64, 4, 8, 128, 200
    fe, bridge, particles, state = problem(args.n, args.p, args.d, args.n_inner)
    drift = jax.jit(lambda b, t, y: b(t, y))
    t_l = timeit(drift, LangevinDrift(fe), 0.3, particles)
    t_b = timeit(drift, bridge, 0.3, state)
    print(f"device: {jax.devices()[0].device_kind}; planted neuron d={args.d} (D={fe.dim}), P={args.p}, "
          f"N={args.n}, num_inner={args.n_inner}")
    print(f"langevin drift {t_l * 1e3:.1f} ms, bridge drift {t_b * 1e3:.1f} ms: bridge/langevin = {t_b / t_l:.1f} "
          f"({t_b / t_l / (args.n_inner + 1):.2f} per inner point + centre)")
    cmd = [sys.executable, __file__, "--memory-child", str(args.memory_n), str(args.p), str(args.d), str(args.n_inner)]
    res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    gib = 2**30
    print(f"peak memory, one bridge step at N={res['n']} num_inner={res['n_inner']} P={res['p']}: XLA temp "
          f"{res['temp_bytes'] / gib:.3f} GiB, process max RSS {res['max_rss_bytes'] / gib:.2f} GiB"
          + (f", GPU peak {res['gpu_peak_bytes'] / gib:.2f} GiB" if res.get("gpu_peak_bytes") else "")
          + f" (a dense N x n_inner x P float32 array: {res['dense_bytes'] / gib:.1f} GiB); step {res['step_s']:.1f} s")
    transport_and_value(fe, bridge, particles, args)


def _once(fn):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t


def transport_and_value(fe, bridge, particles, args):
    m = args.m
    target = fe.prior_sample(jax.random.key(4), m) + 0.3
    mfsde.transport_map(fe, target, jax.random.key(5))                     # compile
    t_fit = min(_once(lambda: mfsde.transport_map(fe, target, jax.random.key(5)).dual) for _ in range(2))
    t_w2 = min(_once(lambda: jnp.asarray(mfsde.w2(fe.prior_sample(jax.random.key(5), m), target, method="sinkhorn",
                                                   reg=0.1))) for _ in range(2))
    tmap = mfsde.transport_map(fe, target, jax.random.key(5))
    w = fe.prior_sample(jax.random.key(6), m)
    apply = jax.jit(lambda t, v: t(v))
    jac = jax.jit(lambda t, v: t.jacobian(v))
    gemm = jax.jit(lambda a, b: jax.nn.softmax(a @ b.T, axis=1) @ b)
    t_apply, t_gemm = timeit(apply, tmap, w), timeit(gemm, w, target)
    t_jac = timeit(jac, tmap, w[:1000])
    print(f"transport map, M={m} D={fe.dim}: fit {t_fit:.2f} s (debiased Sinkhorn W2 of the same clouds "
          f"{t_w2:.2f} s: ratio {t_fit / t_w2:.2f}); T at {m} points {t_apply * 1e3:.1f} ms vs the dense "
          f"softmax-GEMM {t_gemm * 1e3:.1f} ms: ratio {t_apply / t_gemm:.2f}; Jacobian at {min(m, 1000)} points "
          f"{t_jac * 1e3:.1f} ms (eps {float(tmap.epsilon):.3g}, converged {bool(tmap.converged)})")
    value = mfsde.dynamics.ValueFunction(bridge)
    only_v = jax.jit(lambda v, w_: v(w_, 0.3))
    flow = jax.jit(lambda v, w_: v.gibbs_flow(w_, 0.3))
    drift = jax.jit(lambda b, w_: b.estimate(0.3, w_, b.key)[0])
    t_v, t_f, t_d = timeit(only_v, value, particles), timeit(flow, value, particles), timeit(drift, bridge, particles)
    print(f"value function at N={particles.shape[0]} points (num_inner={args.n_inner}): V alone {t_v * 1e3:.1f} ms "
          f"(Ψ at the inner draws, no ∇Ψ), the whole Gibbs flow {t_f * 1e3:.1f} ms, vs the bridge drift "
          f"{t_d * 1e3:.1f} ms: ratios {t_v / t_d:.2f} and {t_f / t_d:.2f}")


if __name__ == "__main__":
    main()
