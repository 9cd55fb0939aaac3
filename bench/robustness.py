"""Benchmark: what the safety nets of issue 12 cost, and the compiles they removed.

Prints, each measured in a fresh subprocess (cold compile caches, as a user's first call):

- tracing a unit model (``mfsde.UnitModel``): the planted tanh neuron, and a unit with
  constrained sites (LKJ(3), Dirichlet(3), Beta × 3, HalfNormal), seconds;
- a checkpointed Langevin run in S segments against the same run unsegmented, wall time
  including compilation (segments share one compiled solve);
- the time from a diverging run's start to its ``DivergenceError`` (detection, the replay
  to the last finite state and the stability hint), against the same run's time to the
  step where it diverged with the detector's first check alone (``jit``: no raise);
- the memory check before a run (``check_run_fits``), microseconds per call.

``--smoke`` runs every measurement at tiny size in this one process (only that they run).

The detector's cost on a clean run is measured by bench/langevin.py (old tree vs new).

Usage: python bench/robustness.py [--smoke] [--json PATH] [--allow-missing]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]

PRELUDE = f"""
import time, json, sys
t_start = time.perf_counter()
import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
import mfsde
ROOT = {str(ROOT)!r}
"""

TRACE_NEURON = """
m = mfsde.load_model(ROOT + "/models/single_neuron.py")
x, y = m.make_data(jax.random.key(0), num_data=64, dim=8)
t = time.perf_counter(); mfsde.UnitModel(m.unit, x); print(json.dumps(time.perf_counter() - t))
"""

TRACE_CONSTRAINED = """
def unit(x):
    c = numpyro.sample("c", dist.LKJ(3, 2.0))
    p = numpyro.sample("p", dist.Dirichlet(jnp.ones(3)))
    b = numpyro.sample("b", dist.Beta(2.0, 3.0).expand([3]).to_event(1))
    s = numpyro.sample("s", dist.HalfNormal(1.0))
    return s * jnp.tanh(x @ (c @ p) + jnp.sum(b))
x = jax.random.normal(jax.random.key(0), (64, 3))
t = time.perf_counter(); mfsde.UnitModel(unit, x); print(json.dumps(time.perf_counter() - t))
"""

CHECKPOINTED = """
import tempfile, os
m = mfsde.load_model(ROOT + "/models/single_neuron.py")
n, p, d, steps, segments = {n}, {p}, {d}, {steps}, {segments}
x, y = m.make_data(jax.random.key(0), num_data=p, dim=d)
fe = mfsde.FreeEnergy(m.unit, x, y, beta=20.0)
p0 = fe.prior_sample(jax.random.key(1), n)
kw = dict(t1=steps * 0.01, dt0=0.01, diagnostics=False)
path = os.path.join(tempfile.mkdtemp(), "ck.npz")
if sys.argv[1] == "plain":
    t = time.perf_counter(); tr = mfsde.langevin(fe, jax.random.key(2), p0, **kw); tr.particles.block_until_ready()
else:
    t = time.perf_counter()
    tr = mfsde.langevin(fe, jax.random.key(2), p0, checkpoint_every=steps // segments, checkpoint_path=path, **kw)
print(json.dumps(time.perf_counter() - t))
"""

DIVERGING = """
m = mfsde.load_model(ROOT + "/models/linear_gaussian.py")
x, y = m.make_data(jax.random.key(0), num_data=50, dim=3)
fe = mfsde.FreeEnergy(m.make_unit(1.0), 10 * x, y, beta=float("inf"))
p0 = fe.prior_sample(jax.random.key(1), 16)
if sys.argv[1] == "raise":
    t = time.perf_counter()
    try:
        mfsde.langevin(fe, jax.random.key(2), p0, t1=200.0, dt0=0.5)
    except mfsde.DivergenceError as e:
        pass
else:
    t = time.perf_counter()
    tr = jax.jit(lambda k: mfsde.langevin(fe, k, p0, t1=200.0, dt0=0.5))(jax.random.key(2))
    tr.particles.block_until_ready()
print(json.dumps(time.perf_counter() - t))
"""

MEMORY_CHECK = """
from mfsde import _memory
m = mfsde.load_model(ROOT + "/models/single_neuron.py")
x, y = m.make_data(jax.random.key(0), num_data=64, dim=8)
fe = mfsde.FreeEnergy(m.unit, x, y, beta=20.0)
run_bytes = _memory.particle_run_bytes(fe, fe.dim)
t = time.perf_counter()
for _ in range(1000):
    _memory.check_run_fits("langevin", run_bytes, 4096, 4)
print(json.dumps((time.perf_counter() - t) / 1000 * 1e6))
"""


def _run(body: str, *args: str) -> float:
    code = textwrap.dedent(PRELUDE) + textwrap.dedent(body)
    if "--smoke" in sys.argv:  # at smoke size only that it runs: in this process, warm caches and all
        out, argv = io.StringIO(), sys.argv
        sys.argv = ["-c", *args]
        try:
            with contextlib.redirect_stdout(out):
                exec(code, {"__name__": "__bench__"})
        finally:
            sys.argv = argv
        return float(json.loads(out.getvalue().strip().splitlines()[-1]))
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        if "--allow-missing" in sys.argv:  # an older tree without the feature measured
            return float("nan")
        raise RuntimeError(out.stderr[-2000:])
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--allow-missing", action="store_true", help="NaN for what an older tree cannot run")
    a = ap.parse_args()
    size = dict(n=16, p=16, d=2, steps=20, segments=4) if a.smoke else dict(n=512, p=512, d=16, steps=2000,
                                                                            segments=50)
    res = {}
    res["trace_neuron_s"] = _run(TRACE_NEURON)
    # at smoke size only that each measurement runs: the costly ones once
    res["trace_constrained_s"] = float("nan") if a.smoke else _run(TRACE_CONSTRAINED)
    print(f"UnitModel trace (cold): planted neuron {res['trace_neuron_s']:.2f} s, "
          f"LKJ+Dirichlet+Beta+HalfNormal unit {res['trace_constrained_s']:.2f} s")
    body = CHECKPOINTED.format(**size)
    res["plain_s"] = _run(body, "plain")
    res["checkpointed_s"] = _run(body, "checkpointed")
    print(f"Langevin N = P = {size['n']}, d = {size['d']}, {size['steps']} steps: unsegmented {res['plain_s']:.2f} s, "
          f"{size['segments']} checkpoint segments {res['checkpointed_s']:.2f} s "
          f"(x{res['checkpointed_s'] / res['plain_s']:.2f}, compile included)")
    res["divergence_raise_s"] = _run(DIVERGING, "raise")
    res["divergence_jit_s"] = float("nan") if a.smoke else _run(DIVERGING, "jit")
    print(f"diverging run (linear unit, inputs x10, dt0 = 0.5): to DivergenceError {res['divergence_raise_s']:.2f} s, "
          f"the same run under jit (stops, no report) {res['divergence_jit_s']:.2f} s")
    res["memory_check_us"] = _run(MEMORY_CHECK)
    print(f"memory check before a run: {res['memory_check_us']:.1f} µs")
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
