"""Benchmark: one mean-field Langevin step through the generic numpyro-traced unit.

Prints, for tanh units a·tanh(⟨w, x⟩) (D = d + 1) at N particles, P data, dimension d,
all timed in the same run (median of repeats, after compilation):

- time per step and implied FLOP/s, counting 4·N·P·d flops a step (the forward GEMM
  Θ·Xᵀ and the backward GEMM of the vjp; elementwise work is not counted);
- the ratio of that throughput to a dense (N, d) @ (d, P) matmul's, timed as one jitted
  call (it then also pays for a fresh (N, P) output buffer), and to the pair of GEMMs of a
  step, (N, d)@(d, P) then (N, P)@(P, d), iterated in a lax.scan (the step's roofline);
- the same step for the unit's contraction written three ways, ``w @ x.T``, ``x @ w`` and
  ``einsum("d,pd->p", w, x)``: through mfsde (contractions rewritten θ-first at trace time,
  ``mfsde._layout``) and through the plain ``vmap`` of the unit that mfsde used before
  (where ``x @ w`` put the particle axis last), timed in interleaved rounds;
- the ratio of our diffrax step (``mfsde.langevin``'s default solver at finite β,
  Leimkuhler–Matthews) to a hand-written ``lax.scan`` Euler–Maruyama of the same drift
  (diffrax's per-step overhead plus LM's, which reuses each step's noise once more), and to a hand-fused JAX step with the derivatives
  written out for this unit (what the generic numpyro tracing costs);
- peak memory of a chunked step at N = P = 10⁵, d = 32 (XLA's buffer accounting and the
  process's max RSS, in a fresh subprocess).

Usage: python bench/langevin.py [--n 4096 --p 4096 --d 64] [--smoke] [--no-memory]
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import resource
import subprocess
import sys
import time

import jax
import jax.numpy as jnp

import mfsde
from mfsde.dynamics import LangevinDrift, LangevinNoise

ROOT = pathlib.Path(__file__).resolve().parents[1]
neuron = mfsde.load_model(ROOT / "models" / "single_neuron.py")

BETA = 1e3
DT = 1e-2


def timeit(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def problem(n, p, d, chunk_size="auto"):
    x, y = neuron.make_data(jax.random.key(0), num_data=p, dim=d)
    fe = mfsde.FreeEnergy(neuron.unit, x, y, beta=BETA, chunk_size=chunk_size)
    return fe, fe.prior_sample(jax.random.key(1), n)


CONTRACTIONS = {"w @ x.T": lambda w, x: w @ x.T, "x @ w": lambda w, x: x @ w,
                "einsum": lambda w, x: jnp.einsum("d,pd->p", w, x)}


def unit_written(form):
    """The single-neuron unit with its contraction ⟨w, x_p⟩ written as ``form``."""
    import numpyro
    import numpyro.distributions as dist

    def unit(x):
        d = x.shape[-1]
        a = numpyro.sample("a", dist.Normal(0.0, neuron.DEFAULTS["prior_scale_a"]))
        w = numpyro.sample("w", dist.Normal(0.0, neuron.DEFAULTS["prior_scale_w"] / math.sqrt(d)).expand([d]).to_event(1))
        return a * jnp.tanh(CONTRACTIONS[form](w, x))

    return unit


class PlainVmap(mfsde.FreeEnergy):
    """Before the layout rewrite: the unit's plain vmap over particles."""

    def features(self, particles, x):
        return jax.vmap(self.unit.apply, in_axes=(0, None))(particles, x)


def bench_forms(fe, p0, steps, repeats):
    """ms/step of each contraction form, rewritten (mfsde) and plain vmap (before), the
    configurations interleaved in every round so that machine noise hits them alike."""
    key = jax.random.key(2)
    runs = {(form, how): ours(cls(unit_written(form), fe.x, fe.y, beta=fe.beta), steps)
            for form in CONTRACTIONS for how, cls in (("mfsde", mfsde.FreeEnergy), ("plain vmap", PlainVmap))}
    for run in runs.values():
        jax.block_until_ready(run(key, p0))
    times = {c: [] for c in runs}
    for _ in range(repeats):
        for c, run in runs.items():
            t = time.perf_counter()
            jax.block_until_ready(run(key, p0))
            times[c].append((time.perf_counter() - t) / steps)
    return {c: (min(v), sorted(v)[len(v) // 2]) for c, v in times.items()}


def gemm_pair(x, steps):
    """Θ ← Θ − ε (Θ Xᵀ) X / P in a scan: the two GEMMs of a step and nothing else."""

    @jax.jit
    def run(w):
        def step(w, _):
            return w - 1e-6 * ((w @ x.T) @ x) / x.shape[0], None

        return jax.lax.scan(step, w, None, length=steps)[0]

    return run


def ours(fe, steps):
    @jax.jit
    def run(key, p0):
        return mfsde.langevin(fe, key, p0, t1=steps * DT, dt0=DT, ts=[steps * DT], progress=False,
                              diagnostics=False).particles

    return run


def scan_reference(fe, steps):
    """Plain Euler–Maruyama in lax.scan with the same drift module and the same final risk."""
    drift, noise = LangevinDrift(fe), LangevinNoise(fe.beta)

    @jax.jit
    def run(key, p0):
        def step(y, k):
            t = 0.0
            dw = jax.random.normal(k, y.shape, y.dtype) * math.sqrt(DT)
            return y + DT * drift(t, y) + noise(t) * dw, None

        y, _ = jax.lax.scan(step, p0, jax.random.split(key, steps))
        return y, fe.risk(y)

    return lambda key, p0: run(key, p0)[0]


def fused_reference(fe, steps, prior_scale_a, prior_scale_w):
    """The same dynamics with the derivatives of a·tanh(⟨w, x⟩) written out by hand."""
    x, y = fe.x, fe.y
    n_data, d = x.shape
    var_a, var_w = prior_scale_a**2, prior_scale_w**2 / d
    scale = math.sqrt(2 / fe.beta)

    def drift(th):
        a, w = th[:, 0], th[:, 1:]
        h = jnp.tanh(w @ x.T)                               # (N, P)
        r = (a @ h / th.shape[0] - y) / n_data              # (P,)
        ga = h @ r
        gw = (a[:, None] * (1 - h * h) * r[None, :]) @ x    # (N, d)
        g = jnp.concatenate([ga[:, None], gw], 1)
        prior = jnp.concatenate([a[:, None] / var_a, w / var_w], 1)
        return -(g + prior / fe.beta)

    @jax.jit
    def run(key, p0):
        def step(th, k):
            dw = jax.random.normal(k, th.shape, th.dtype) * math.sqrt(DT)
            return th + DT * drift(th) + scale * dw, None

        th, _ = jax.lax.scan(step, p0, jax.random.split(key, steps))
        return th, fe.risk(th)

    return lambda key, p0: run(key, p0)[0]


def bench_step(n, p, d, steps, repeats):
    fe, p0 = problem(n, p, d)
    key = jax.random.key(2)
    a = jax.random.normal(jax.random.key(3), (n, d), jnp.float32)
    b = jax.random.normal(jax.random.key(4), (d, p), jnp.float32)
    matmul = jax.jit(lambda a, b: a @ b)
    t_mm = timeit(matmul, a, b, repeats=repeats * 3)
    t_pair = timeit(gemm_pair(fe.x, steps), a, repeats=repeats) / steps
    t_ours = timeit(ours(fe, steps), key, p0, repeats=repeats) / steps
    t_forms = bench_forms(fe, p0, steps, 2 * repeats)
    fe_one = mfsde.FreeEnergy(fe.unit, fe.x, fe.y, beta=fe.beta, chunk_size=None)
    t_one = timeit(ours(fe_one, steps), key, p0, repeats=repeats) / steps
    t_scan = timeit(scan_reference(fe, steps), key, p0, repeats=repeats) / steps
    t_fused = timeit(fused_reference(fe, steps, neuron.DEFAULTS["prior_scale_a"], neuron.DEFAULTS["prior_scale_w"]),
                     key, p0, repeats=repeats) / steps
    flops = 4 * n * p * d
    res = dict(
        n=n, p=p, d=d, steps=steps, device=str(jax.devices()[0].device_kind), backend=jax.default_backend(),
        matmul_s=t_mm, matmul_gflops=2 * n * p * d / t_mm / 1e9,
        step_s=t_ours, step_gflops=flops / t_ours / 1e9,
        scan_step_s=t_scan, fused_step_s=t_fused, gemm_pair_s=t_pair,
        forms_step_s={f"{form} ({how})": t for (form, how), t in t_forms.items()},  # (min, median)
        one_chunk_step_s=t_one, chunk=fe.chunk_for(n),
        ratio_to_matmul=(flops / t_ours) / (2 * n * p * d / t_mm),
        ratio_to_gemm_pair=t_pair / t_ours,
        fused_ratio_to_matmul=(flops / t_fused) / (2 * n * p * d / t_mm),
        diffrax_over_scan=t_ours / t_scan,
        ours_over_fused=t_ours / t_fused,
    )
    print(f"device: {res['device']} ({res['backend']}), N={n} P={p} d={d}, {steps} steps, median of {repeats}")
    print(f"  dense matmul (N,d)@(d,P), one call: {t_mm * 1e3:9.3f} ms  {res['matmul_gflops']:8.1f} GFLOP/s")
    print(f"  GEMM pair of a step, in a scan:     {t_pair * 1e3:9.3f} ms  {flops / t_pair / 1e9:8.1f} GFLOP/s")
    print(f"  mfsde.langevin step (diffrax, chunk {fe.chunk_for(n)}): {t_ours * 1e3:9.3f} ms  {res['step_gflops']:8.1f} GFLOP/s"
          f"  = {100 * res['ratio_to_matmul']:.1f}% of the matmul's throughput, {100 * res['ratio_to_gemm_pair']:.1f}% of the GEMM pair's")
    print(f"  lax.scan Euler-Maruyama, same drift:  {t_scan * 1e3:9.3f} ms   diffrax/scan = {res['diffrax_over_scan']:.3f}")
    print(f"  hand-fused JAX step (one chunk):      {t_fused * 1e3:9.3f} ms  = {100 * res['fused_ratio_to_matmul']:.1f}% of the matmul's"
          f" throughput;  generic/fused = {res['ours_over_fused']:.3f}")
    print(f"  same step, one chunk (chunk_size=None): {t_one * 1e3:9.3f} ms   (x {t_one / t_ours:.2f})")
    fastest = [min(t[i] for (_, how), t in t_forms.items() if how == "mfsde") for i in (0, 1)]
    print(f"  the unit's contraction written three ways ({2 * repeats} interleaved rounds; best and median,"
          " ratio to the fastest mfsde form):")
    for (form, how), (best, med) in t_forms.items():
        print(f"    {form:8s} {how:10s} best {best * 1e3:8.3f} ms  x {best / fastest[0]:.2f}"
              f"   median {med * 1e3:8.3f} ms  x {med / fastest[1]:.2f}")
    res["forms_spread_best"] = max(t[0] for (_, how), t in t_forms.items() if how == "mfsde") / fastest[0]
    return res


def memory_child(n, p, d, chunk):
    fe, p0 = problem(n, p, d, chunk_size=chunk)
    run = ours(fe, 1)
    key = jax.random.key(2)
    compiled = run.lower(key, p0).compile()
    ma = compiled.memory_analysis()
    t = time.perf_counter()
    jax.block_until_ready(compiled(key, p0))
    elapsed = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = dict(n=n, p=p, d=d, chunk=chunk, temp_bytes=ma.temp_size_in_bytes,
               argument_bytes=ma.argument_size_in_bytes, max_rss_bytes=rss, step_with_risk_s=elapsed)
    gpu = jax.devices()[0].memory_stats() if jax.default_backend() == "gpu" else None
    if gpu:
        out["gpu_peak_bytes"] = gpu.get("peak_bytes_in_use")
    print(json.dumps(out))


def bench_memory(n, p, d, chunk):
    cmd = [sys.executable, __file__, "--memory-child", str(n), str(p), str(d), str(chunk)]
    line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    res = json.loads(line)
    gib = 2**30
    print(f"peak memory, chunked step + risk at N={n} P={p} d={d} chunk={chunk}: "
          f"XLA temp {res['temp_bytes'] / gib:.2f} GiB, arguments {res['argument_bytes'] / gib:.3f} GiB, "
          f"process max RSS {res['max_rss_bytes'] / gib:.2f} GiB"
          + (f", GPU peak {res['gpu_peak_bytes'] / gib:.2f} GiB" if res.get("gpu_peak_bytes") else "")
          + f" (one step + risk: {res['step_with_risk_s']:.1f} s)")
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--p", type=int, default=4096)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--memory", type=int, nargs=4, default=[100_000, 100_000, 32, 1024], metavar=("N", "P", "D", "CHUNK"))
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (used by the test suite)")
    ap.add_argument("--json", type=pathlib.Path, help="also write the results here")
    ap.add_argument("--memory-child", nargs=4, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        return memory_child(*args.memory_child)
    if args.smoke:
        args.n, args.p, args.d, args.steps, args.repeats = 64, 64, 8, 5, 1
        args.memory = [256, 512, 8, 64]
    res = {"step": bench_step(args.n, args.p, args.d, args.steps, args.repeats)}
    if not args.no_memory:
        res["memory"] = bench_memory(*args.memory)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
