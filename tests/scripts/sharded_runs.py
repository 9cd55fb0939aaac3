"""Sharded runs on simulated CPU devices, for tests/test_sharding.py (issue 14).

``python tests/scripts/sharded_runs.py OUT.json`` (4 simulated devices, one process):
every dynamics family run with the same key on one device and with its particles split
over the 4 devices (a mesh with explicit axes, ``jax.make_mesh``'s default, and an ``Auto``
one for Langevin), and the collectives of each family's compiled drift (or jump) and of
the whole compiled Langevin solve, read from the HLO text. Then it starts 2 processes with 2
simulated devices each (``jax.distributed`` over localhost, gloo CPU collectives), which run
one Langevin trajectory on the particles split over all 4 devices; process 0 writes the
gathered result for the comparison. Writes what it measured as JSON; the test asserts.

``python tests/scripts/sharded_runs.py --worker I PORT OUT.npz``: process I of that run.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time

WORKER = len(sys.argv) > 1 and sys.argv[1] == "--worker"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count="
                           f"{2 if WORKER else 4}").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_enable_x64", True)
if WORKER:
    # before anything starts the backend (importing mfsde included)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{sys.argv[3]}", num_processes=2,
                               process_id=int(sys.argv[2]), initialization_timeout=120)

import equinox as eqx  # noqa: E402
from jax.sharding import AxisType  # noqa: E402

import mfsde  # noqa: E402
from mfsde.dynamics import _core  # noqa: E402
from mfsde.dynamics._sharding import hlo_collectives as collectives  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_DATA, NUM_PARTICLES = 64, 16
LANGEVIN = dict(t1=0.5, dt0=0.1)


def problem():
    neuron = mfsde.load_model(os.path.join(ROOT, "models", "single_neuron.py"))
    x, y = neuron.make_data(jax.random.key(0), num_data=NUM_DATA, dim=4)
    fe = mfsde.FreeEnergy(neuron.unit, x, y, beta=50.0)
    return fe, fe.prior_sample(jax.random.key(1), NUM_PARTICLES)


def families(fe, theta):
    key = jax.random.key(2)
    return {
        "langevin": lambda mesh: mfsde.langevin(fe, key, theta, **LANGEVIN, mesh=mesh),
        "sgd": lambda mesh: mfsde.sgd(fe, key, theta, num_steps=6, step_size=0.05, batch_size=8, mesh=mesh),
        "wfr": lambda mesh: mfsde.wfr(fe, key, theta, t1=0.5, dt0=0.1, alpha=1.0, mesh=mesh),
        "wfr_clone": lambda mesh: mfsde.wfr(fe, key, theta, t1=0.5, dt0=0.1, alpha=1.0, birth_death="clone",
                                            mesh=mesh),
        "mckean_vlasov": lambda mesh: mfsde.mckean_vlasov(fe, key, NUM_PARTICLES, dt0=0.25, mesh=mesh),
        "schrodinger_bridge": lambda mesh: mfsde.schrodinger_bridge(fe, fe.output(theta), key, NUM_PARTICLES,
                                                                    dt0=0.25, num_inner=4, samples=theta,
                                                                    log_normalizer=0.0, mesh=mesh),
    }


def theta_of(traj):
    p = traj.particles
    return p.theta if isinstance(p, mfsde.Particles) else p


def captured_run(run, mesh):
    """(the run's sde_of, key, sharded start, drive kwargs), captured at the driver."""
    got = {}

    def capture(sde_of, key, y0, **kwargs):
        got.update(sde_of=sde_of, key=key, y0=y0, kwargs=kwargs)
        raise StopIteration

    inner, _core._drive = _core._drive, capture
    try:
        run(mesh)
    except StopIteration:
        pass
    finally:
        _core._drive = inner
    return got


def step_collectives(run, mesh):
    """Collectives of the family's compiled drift (or jump, for a chain of jumps)."""
    got = captured_run(run, mesh)
    sde = got["sde_of"](got["key"])[0]
    y0 = got["y0"]
    with jax.set_mesh(y0.sharding.mesh):
        if sde.drift is not None:
            lowered = eqx.filter_jit(lambda s, t, y: s.drift(t, y, y)).lower(sde, 0.1, y0)
        else:
            lowered = eqx.filter_jit(lambda s, k, t, y: s.jump(k, t, y)).lower(sde, got["key"], 0.1, y0)
    return collectives(lowered.compile().compiled.as_text())


def solve_collectives(run, mesh):
    """Collectives of the whole compiled Langevin solve (loop, saves, divergence event)."""
    got = captured_run(run, mesh)
    sde, noise_key = got["sde_of"](got["key"])[:2]
    kw, y0 = got["kwargs"], got["y0"]
    with jax.set_mesh(y0.sharding.mesh):
        lowered = eqx.filter_jit(lambda s, k, y: _core.solve(
            s, k, y, t0=0.0, t1=kw["t1"], dt0=kw["dt0"], solver=kw["solver"], observables=kw["observables"],
            args=y)).lower(sde, noise_key, y0)
    return collectives(lowered.compile().compiled.as_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def multi_process(fe, theta, out_dir):
    port = free_port()
    outs = [os.path.join(out_dir, f"process{i}.npz") for i in range(2)]
    for stale in outs + [os.path.join(out_dir, "checkpoint.npz")]:
        if os.path.exists(stale):
            os.remove(stale)
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", str(i), str(port), outs[i]], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs, deadline = [], time.monotonic() + 240
    for p in procs:
        try:
            logs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
        except subprocess.TimeoutExpired:
            p.kill()
            logs.append(p.communicate()[0] + "\n(timed out)")
    single = mfsde.langevin(fe, jax.random.key(2), theta, **LANGEVIN)
    with tempfile.TemporaryDirectory() as tmp:
        checkpointed = mfsde.langevin(fe, jax.random.key(2), theta, **LANGEVIN, checkpoint_every=2,
                                      checkpoint_path=os.path.join(tmp, "checkpoint.npz"))
    result = {"returncodes": [p.returncode for p in procs], "logs": [log[-3000:] for log in logs]}
    if all(p.returncode == 0 for p in procs):
        got = np.load(outs[0])
        result.update(max_abs_diff=float(np.max(np.abs(got["particles"] - np.asarray(single.particles)))),
                      risk_diff=float(np.max(np.abs(got["risk"] - np.asarray(single.observables["risk"])))),
                      devices=int(got["devices"]), local_devices=int(got["local_devices"]),
                      processes=int(got["processes"]), spec=str(got["spec"]),
                      checkpointed_diff=float(np.max(np.abs(got["checkpointed"] - np.asarray(checkpointed.particles)))),
                      resumed_diff=float(np.max(np.abs(got["resumed"] - got["checkpointed"]))),
                      cache_dirs=[str(np.load(o)["cache_dir"]) for o in outs],
                      idata_diff=float(np.max(np.abs(got["idata_a"] - np.asarray(
                          mfsde.to_inference_data(single, fe)["posterior"]["a"])))))
    return result


def worker(out: str):
    fe, theta = problem()
    mesh = jax.make_mesh((jax.device_count(),), ("particles",))
    traj = mfsde.langevin(fe, jax.random.key(2), mfsde.shard_particles(theta, mesh), **LANGEVIN)
    from jax.experimental import multihost_utils

    particles = multihost_utils.process_allgather(traj.particles, tiled=True)
    # checkpoints: process 0 writes the gathered state, every process resumes from it
    path = os.path.join(os.path.dirname(out), "checkpoint.npz")
    checkpointed = mfsde.langevin(fe, jax.random.key(2), mfsde.shard_particles(theta, mesh), **LANGEVIN,
                                  checkpoint_every=2, checkpoint_path=path)
    resumed = mfsde.langevin(fe, jax.random.key(2), mfsde.shard_particles(theta, mesh), **LANGEVIN,
                             checkpoint_every=2, checkpoint_path=path)
    idata = mfsde.to_inference_data(traj, fe)  # gathers the particles on every process
    gathered = [multihost_utils.process_allgather(t.particles, tiled=True) for t in (checkpointed, resumed)]
    if jax.process_index() == 0:
        np.savez(out, particles=np.asarray(particles), risk=np.asarray(traj.observables["risk"]),
                 devices=jax.device_count(), local_devices=jax.local_device_count(), processes=jax.process_count(),
                 spec=str(traj.particles.sharding.spec),
                 checkpointed=gathered[0], resumed=gathered[1],
                 idata_a=np.asarray(idata["posterior"]["a"]),
                 cache_dir=str(jax.config.jax_compilation_cache_dir))
    else:
        np.savez(out, cache_dir=str(jax.config.jax_compilation_cache_dir))
    jax.distributed.shutdown()


def main(out: str):
    fe, theta = problem()
    runs = families(fe, theta)
    explicit = jax.make_mesh((4,), ("particles",), axis_types=(AxisType.Explicit,))
    auto = jax.make_mesh((4,), ("particles",), axis_types=(AxisType.Auto,))
    result = {"devices": jax.device_count(), "num_data": NUM_DATA, "num_particles": NUM_PARTICLES, "families": {}}
    for name, run in runs.items():
        single = run(None)
        row = {}
        for label, mesh in (("explicit", explicit), ("auto", auto)) if name == "langevin" else (("explicit", explicit),):
            sharded = run(mesh)
            a, b = theta_of(single), theta_of(sharded)
            row[label] = {
                "max_abs_diff": float(jnp.max(jnp.abs(a - b))),
                "max_obs_diff": max(float(jnp.max(jnp.abs(single.observables[k] - sharded.observables[k])))
                                    for k in single.observables),
                "spec": str(b.sharding.spec), "num_devices": b.sharding.num_devices,
            }
        # the start already sharded (no mesh=): the run follows it
        if name == "langevin":
            started = mfsde.langevin(fe, jax.random.key(2), mfsde.shard_particles(theta, explicit), **LANGEVIN)
            row["follows_start"] = {"max_abs_diff": float(jnp.max(jnp.abs(single.particles - started.particles))),
                                    "spec": str(started.particles.sharding.spec)}
        row["step_collectives"] = step_collectives(run, explicit)
        result["families"][name] = row
    # without the in-run k-NN diagnostics, which gather the cloud by design (O(N²) pairs)
    result["langevin_solve_collectives"] = solve_collectives(
        lambda mesh: mfsde.langevin(fe, jax.random.key(2), theta, **LANGEVIN, mesh=mesh, diagnostics=False), explicit)
    t = time.perf_counter()
    result["multi_process"] = multi_process(fe, theta, os.path.dirname(os.path.abspath(out)))
    result["multi_process"]["seconds"] = time.perf_counter() - t
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k != "families"}, indent=1)[:4000])


if __name__ == "__main__":
    if WORKER:
        worker(sys.argv[4])
    else:
        main(sys.argv[1])
