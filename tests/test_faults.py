"""Faults during long runs (issue 12 §4): kills, truncated files, a full disk, another run's file.

Each family's checkpointed run is killed 20 times at random points and resumed after each
kill; the result must be bit-identical (np.array_equal) to the uninterrupted checkpointed
run. The runs have more segments than kills, so each of the first 20 checkpoint writes is
killed, in one of four places drawn at random (fixed seed): before the write (the segment's work is lost and redone), half-way through writing
the temporary file, after it is written but before it replaces the old one, or just after.
The first three must leave the previous checkpoint as it was. One run is also killed for
real (a subprocess SIGKILLs itself after its 37th checkpoint write) and resumed here.
"""

import errno
import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import mfsde
import mfsde.dynamics._checkpoint as ck

KILLS = 20
PHASES = ("before", "writing", "before_rename", "after")


def _runs(fe, p0):
    pool = fe.prior_sample(jax.random.key(2), 16)
    return {
        "langevin": lambda path: mfsde.langevin(fe, jax.random.key(3), p0, t1=0.24, dt0=0.01, checkpoint_every=1,
                                                checkpoint_path=path, diagnostics=False),
        "sgd": lambda path: mfsde.sgd(fe, jax.random.key(4), p0, num_steps=24, step_size=0.05, batch_size=5,
                                      save_every=2, checkpoint_every=1, checkpoint_path=path),
        "mckean_vlasov": lambda path: mfsde.mckean_vlasov(fe, jax.random.key(5), 8, dt0=1 / 24, checkpoint_every=1,
                                                          checkpoint_path=path),
        "schrodinger_bridge": lambda path: mfsde.schrodinger_bridge(
            fe, fe.output(p0), jax.random.key(6), 8, dt0=1 / 24, num_inner=4, samples=pool, log_normalizer=0.0,
            checkpoint_every=1, checkpoint_path=path),
    }


class Killed(BaseException):
    """A kill: BaseException, like KeyboardInterrupt, so that nothing in mfsde catches it."""


def _identical(a, b):
    assert np.array_equal(a.ts, b.ts) and np.array_equal(a.particles, b.particles)
    assert a.observables.keys() == b.observables.keys()
    for k in a.observables:
        assert np.array_equal(a.observables[k], b.observables[k], equal_nan=True), k


@pytest.mark.parametrize("family", ["langevin", "sgd", "mckean_vlasov", "schrodinger_bridge"])
def test_twenty_kills_resume_bit_identical(small, tmp_path, monkeypatch, family, real_kill):
    run = _runs(*small)[family]
    reference = run(tmp_path / "reference.npz")
    path = tmp_path / "run.npz"
    rng = np.random.default_rng(sum(map(ord, family)))
    real_save, real_savez, real_replace = ck.CheckpointFile.save, np.savez, os.replace
    kills, phases_seen, state = 0, set(), {}

    def stored():
        return path.read_bytes() if path.exists() else None

    def save(self, *args):
        # a kill at each checkpoint write until there were KILLS, at a random place
        phase = PHASES[rng.integers(len(PHASES))] if kills < KILLS else None
        state.update(phase=phase, before=stored())
        if phase == "before":
            raise Killed
        real_save(self, *args)
        if phase == "after":
            raise Killed

    def savez(file, **arrays):
        if state.get("phase") == "writing":
            real_savez(file, **arrays)
            file.truncate(file.tell() // 2)  # the process dies with half the file on disk
            raise Killed
        real_savez(file, **arrays)

    def replace(src, dst):
        if state.get("phase") == "before_rename":
            raise Killed
        real_replace(src, dst)

    monkeypatch.setattr(ck.CheckpointFile, "save", save)
    monkeypatch.setattr(ck.np, "savez", savez)
    monkeypatch.setattr(ck.os, "replace", replace)
    result = None
    for _ in range(4 * KILLS):
        try:
            result = run(path)
            break
        except Killed:
            kills += 1
            phases_seen.add(state["phase"])
            if state["phase"] != "after":  # the previous checkpoint is left as it was
                assert stored() == state["before"]
    assert kills == KILLS and phases_seen == set(PHASES) and result is not None
    _identical(result, reference)


REAL_KW = dict(t1=1.0, dt0=0.01, checkpoint_every=1, diagnostics=False)
REAL_KILL_AT = 37  # of the run's 100 checkpoint writes


@pytest.fixture(scope="module")
def real_kill(root, tmp_path_factory):
    """A subprocess running a checkpointed Langevin run that SIGKILLs itself (no cleanup, no
    exception handlers) right after its 37th checkpoint write; started when the module's
    first test asks for it, so that it runs beside the in-process tests."""
    path = tmp_path_factory.mktemp("real_kill") / "run.npz"
    script = textwrap.dedent(f"""
        import os, signal, jax, mfsde
        import mfsde.dynamics._checkpoint as ck
        jax.config.update("jax_enable_x64", True)
        real, calls = ck.CheckpointFile.save, []

        def save(self, *args):
            real(self, *args)
            calls.append(1)
            if len(calls) == {REAL_KILL_AT}:
                os.kill(os.getpid(), signal.SIGKILL)

        ck.CheckpointFile.save = save
        m = mfsde.load_model({str(root / "models" / "single_neuron.py")!r})
        x, y = m.make_data(jax.random.key(0), num_data=20, dim=2)
        fe = mfsde.FreeEnergy(m.unit, x, y, beta=20.0)
        mfsde.langevin(fe, jax.random.key(7), fe.prior_sample(jax.random.key(1), 8), checkpoint_path={str(path)!r},
                       **{REAL_KW!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ, JAX_PLATFORMS="cpu"),
                            stderr=subprocess.PIPE)
    yield proc, path
    if proc.poll() is None:
        proc.kill()


def test_a_real_kill_resumes_bit_identical(small, tmp_path, real_kill):
    fe, p0 = small
    proc, path = real_kill
    proc.wait(timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    with np.load(path) as f:
        assert int(f["next_segment"]) == REAL_KILL_AT
    resumed = mfsde.langevin(fe, jax.random.key(7), p0, checkpoint_path=path, **REAL_KW)
    _identical(resumed, mfsde.langevin(fe, jax.random.key(7), p0, checkpoint_path=tmp_path / "ref.npz", **REAL_KW))


def test_bad_files_are_refused_and_the_good_one_kept(small, tmp_path, monkeypatch):
    fe, p0 = small
    runs = _runs(fe, p0)
    path = tmp_path / "run.npz"
    runs["langevin"](path)
    good = path.read_bytes()
    # truncated at 5 lengths: refused as corrupt, the file left as it was
    for frac in (0.0, 0.1, 0.5, 0.9, 0.99):
        path.write_bytes(good[: int(frac * len(good))])
        with pytest.raises(ValueError, match="corrupt"):
            runs["langevin"](path)
        assert path.read_bytes() == good[: int(frac * len(good))]
    path.write_bytes(good)
    # another model's (other data), another family's: refused, named, kept
    x2, y2 = fe.x + 1.0, fe.y
    other = mfsde.FreeEnergy(fe.unit, x2, y2, beta=fe.beta)
    with pytest.raises(ValueError, match=r"different run \(differs in: .*data_sha256"):
        mfsde.langevin(other, jax.random.key(3), p0, t1=0.24, dt0=0.01, checkpoint_every=1, checkpoint_path=path,
                       diagnostics=False)
    with pytest.raises(ValueError, match=r"different run \(differs in: .*family"):
        mfsde.sgd(fe, jax.random.key(3), p0, num_steps=24, step_size=0.01, checkpoint_every=1, checkpoint_path=path)
    assert path.read_bytes() == good
    # a full disk part-way through a write: a clear OSError, the good checkpoint whole
    path.unlink()
    calls = []
    real_savez = np.savez

    def full_disk(file, **arrays):
        calls.append(1)
        if len(calls) == 3:
            file.write(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_savez(file, **arrays)

    monkeypatch.setattr(ck.np, "savez", full_disk)
    with pytest.raises(OSError, match=r"could not write the checkpoint after segment 3 .*No space left on device.*"
                                      r"previous checkpoint .* is intact, and rerunning resumes from it") as err:
        runs["langevin"](path)
    assert err.value.errno == errno.ENOSPC
    assert not path.with_name(path.name + ".tmp.npz").exists()
    with np.load(path) as f:
        assert int(f["next_segment"]) == 2
    monkeypatch.setattr(ck.np, "savez", real_savez)
    _identical(runs["langevin"](path), runs["langevin"](tmp_path / "ref.npz"))
