"""Benchmark: the particle axis split over devices (issue 14).

Prints, all measured in this run:

- weak scaling: ms per Langevin step (``mfsde.langevin``, Leimkuhler–Matthews, no in-run
  diagnostics) at a fixed number of particles per device on K = 1, 2, 4 devices, each K in
  a fresh subprocess (on CPU the devices are simulated with
  ``--xla_force_host_platform_device_count=K``; on GPU the first K real ones), and the
  efficiency t(1)/t(K). On one CPU the simulated devices share its cores, so this measures
  the overhead of partitioning and the collectives, not a speed-up;
- the all-reduce bytes per drift evaluation, read from the compiled drift's HLO, against
  the P · itemsize of one f_ρ (what the design says it must be);
- the largest N that fits a chunked Langevin step for P = 10⁵, d = 32 (chunks of 1024 data
  points) in 4 GB on one device, from XLA's memory accounting of the compiled step
  (``memory_analysis``: arguments + temporaries) at two N, which are affine in N; and its
  extrapolation to 8 devices, where each holds N/8 particles and the whole data.

Usage: python bench/scale.py [--per-device 2048] [--p 4096] [--d 32] [--steps 20] [--smoke]
The same command runs unchanged on a GPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
BETA, DT = 1e3, 1e-2


def child(k: int, per_device: int, p: int, d: int, steps: int):
    import jax
    import equinox as eqx

    import mfsde
    from mfsde.dynamics import LangevinDrift
    from mfsde.dynamics._sharding import Constrained, hlo_collectives as collectives

    neuron = mfsde.load_model(ROOT / "models" / "single_neuron.py")
    x, y = neuron.make_data(jax.random.key(0), num_data=p, dim=d)
    fe = mfsde.FreeEnergy(neuron.unit, x, y, beta=BETA)
    n = per_device * k
    theta = fe.prior_sample(jax.random.key(1), n)
    mesh = jax.make_mesh((k,), ("particles",), devices=jax.devices()[:k]) if k > 1 else None

    def run():
        traj = mfsde.langevin(fe, jax.random.key(2), theta, t1=steps * DT, dt0=DT, diagnostics=False, mesh=mesh,
                              ts=[0.0, steps * DT])
        return jax.block_until_ready(traj.particles)

    run()  # compile
    times = []
    for _ in range(3):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    out = dict(devices=k, n=n, p=p, d=d, ms_per_step=1e3 * sorted(times)[1] / steps, backend=jax.default_backend())
    if mesh is not None:
        from jax.sharding import NamedSharding, PartitionSpec

        sharding = NamedSharding(mesh, PartitionSpec("particles", None))
        placed = jax.device_put(theta, sharding)
        with jax.set_mesh(mesh):
            hlo = eqx.filter_jit(lambda dr, t, th: dr(t, th)).lower(
                Constrained(LangevinDrift(fe), sharding), 0.0, placed).compile().compiled.as_text()
        found = collectives(hlo)
        # the drift's all-reduce sits in the loop over data chunks: once per chunk
        chunks = -(-p // fe.chunk_for(n))
        out["chunks"] = chunks
        out["all_reduce_bytes"] = chunks * sum(c[1] for c in found if c[0] == "all-reduce") * theta.dtype.itemsize
        out["itemsize"] = theta.dtype.itemsize
        out["other_collectives"] = [c[:2] for c in found if c[0] != "all-reduce"]
    print(json.dumps(out))


def memory_child(ns: list[int], p: int, d: int, chunk: int):
    import jax

    import mfsde
    from mfsde.dynamics import LangevinDrift

    neuron = mfsde.load_model(ROOT / "models" / "single_neuron.py")
    x = jax.numpy.ones((p, d), jax.numpy.float32)
    fe = mfsde.FreeEnergy(neuron.unit, x, x[:, 0], beta=BETA, chunk_size=chunk)
    rows = []
    for n in ns:
        # compiled, not run: nothing of size N is allocated to be measured
        theta = jax.ShapeDtypeStruct((n, d + 1), jax.numpy.float32)
        compiled = jax.jit(lambda th: th + DT * LangevinDrift(fe)(0.0, th)).lower(theta).compile()
        ma = compiled.memory_analysis()
        rows.append(dict(n=n, bytes=ma.argument_size_in_bytes + ma.temp_size_in_bytes + ma.output_size_in_bytes))
    print(json.dumps(rows))


def spawn(args: list[str], k: int) -> dict:
    env = dict(os.environ)
    if not _has_accelerator():
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={k}").strip()
    line = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip().splitlines()[-1]
    return json.loads(line)


def _has_accelerator() -> bool:
    import jax

    return jax.default_backend() != "cpu"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-device", type=int, default=2048)
    ap.add_argument("--p", type=int, default=4096)
    ap.add_argument("--d", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--memory", type=int, nargs=3, default=[100_000, 32, 1024], metavar=("P", "D", "CHUNK"))
    ap.add_argument("--budget-gb", type=float, default=4.0)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--child", nargs=5, type=int, help=argparse.SUPPRESS)
    ap.add_argument("--memory-child", nargs="+", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    if args.memory_child:
        *ns, p, d, chunk = args.memory_child
        return memory_child(ns, p, d, chunk)
    if args.smoke:
        args.per_device, args.p, args.d, args.steps, args.memory = 64, 128, 4, 3, [2048, 8, 256]
    res = {"weak_scaling": []}
    print(f"weak scaling: {args.per_device} particles per device, P = {args.p}, d = {args.d}, "
          f"{args.steps} Langevin steps (median of 3 runs)")
    for k in args.devices:
        row = spawn(["--child", str(k), str(args.per_device), str(args.p), str(args.d), str(args.steps)], k)
        res["weak_scaling"].append(row)
        base = res["weak_scaling"][0]["ms_per_step"]
        extra = ""
        if "all_reduce_bytes" in row:
            extra = (f"; all-reduce {row['all_reduce_bytes']} B per drift evaluation in {row['chunks']} data "
                     f"chunk(s) (one f_rho: P x {row['itemsize']} B = {args.p * row['itemsize']} B)"
                     f"{'; other collectives ' + str(row['other_collectives']) if row['other_collectives'] else ''}")
        print(f"  {k} device(s) [{row['backend']}], N = {row['n']:7d}: {row['ms_per_step']:9.3f} ms/step   "
              f"efficiency t(1)/t({k}) = {base / row['ms_per_step']:.2f}{extra}")
    p, d, chunk = args.memory
    n1, n2 = 1 << 14, 1 << 16
    rows = spawn(["--memory-child", str(n1), str(n2), str(p), str(d), str(chunk)], 1)
    (a1, b1), (a2, b2) = ((r["n"], r["bytes"]) for r in rows)
    slope = (b2 - b1) / (a2 - a1)
    fixed = b1 - slope * a1
    budget = args.budget_gb * 1e9
    n_max = int((budget - fixed) / slope)
    res["memory"] = dict(p=p, d=d, chunk=chunk, rows=rows, bytes_per_particle=slope, fixed_bytes=fixed,
                         budget_bytes=budget, largest_n_one_device=n_max, largest_n_eight_devices=8 * n_max)
    print(f"memory of a chunked step, P = {p}, d = {d}, chunk {chunk} (XLA accounting, float32): "
          f"{slope:.0f} B per particle + {fixed / 1e6:.1f} MB fixed (data, one chunk's buffers)")
    print(f"  largest N in {args.budget_gb:g} GB on one device: {n_max:,}; on 8 devices (N/8 each, data "
          f"replicated): {8 * n_max:,}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
