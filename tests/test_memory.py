"""Memory is checked before the work (issue 12 §3): a run whose arrays cannot fit is refused
from its shapes alone, with the largest setting that fits, before anything compiles.

The limit is lowered artificially (MFSDE_MEMORY_LIMIT). The bound is exact arithmetic on
the shapes, so the test checks it at the boundary: the N the error names fits, N + 1 does not.
"""

import re

import jax
import numpy as np
import pytest

import mfsde
from mfsde import _memory

LIMIT = 4_000_000  # bytes


@pytest.fixture(scope="module")
def fe(linear):
    x, y = linear.make_data(jax.random.key(0), num_data=1000, dim=3)
    return mfsde.FreeEnergy(linear.make_unit(1.0), x, y, beta=10.0, chunk_size=None)


@pytest.fixture
def low_limit(monkeypatch):
    monkeypatch.setenv(_memory.LIMIT_ENV, str(LIMIT))


def test_the_bound_is_the_shapes(fe):
    # 5 state copies of (N, D) and the (N, P) unit outputs with their cotangents, per replicate
    run_bytes = _memory.particle_run_bytes(fe, fe.dim)
    assert run_bytes(100, 3) == 3 * (5 * 100 * 3 + 2 * 100 * 1000) * 8


def test_runs_too_big_are_refused_with_what_fits(fe, low_limit):
    run_bytes = _memory.particle_run_bytes(fe, fe.dim)
    p0 = np.zeros((2000, 3))
    with pytest.raises(MemoryError, match=r"langevin with 2000 particles needs at least [0-9.]+ MiB, more than the 3.81 MiB available \(MFSDE_MEMORY_LIMIT\)") as err:
        mfsde.langevin(fe, jax.random.key(0), p0, t1=1.0, dt0=0.1)
    n_fit = int(re.search(r"num particles <= (\d+)", str(err.value)).group(1))
    assert run_bytes(n_fit, 1) <= LIMIT < run_bytes(n_fit + 1, 1)
    # replicates multiply it; both ways out are named
    with pytest.raises(MemoryError, match=r"x 4 replicates.*with 4 replicates or at most (\d+) replicates") as err:
        mfsde.langevin(fe, jax.random.split(jax.random.key(0), 4), p0[:200], t1=1.0, dt0=0.1)
    r_fit = int(re.search(r"at most (\d+) replicates", str(err.value)).group(1))
    assert run_bytes(200, r_fit) <= LIMIT < run_bytes(200, r_fit + 1)
    # every family checks
    with pytest.raises(MemoryError, match="sgd with 2000 particles"):
        mfsde.sgd(fe, jax.random.key(0), p0, num_steps=10, step_size=0.1)
    with pytest.raises(MemoryError, match="mckean_vlasov with 2000 particles"):
        mfsde.mckean_vlasov(fe, jax.random.key(0), 2000, dt0=0.1)
    # a run that fits is not refused
    tr = mfsde.langevin(fe, jax.random.key(0), p0[:n_fit], t1=0.2, dt0=0.1, diagnostics=False)
    assert np.all(np.isfinite(np.asarray(tr.particles)))


def test_the_limit_is_read_from_the_device(monkeypatch):
    monkeypatch.delenv(_memory.LIMIT_ENV, raising=False)
    assert _memory.available_bytes() > 0
    monkeypatch.setenv(_memory.LIMIT_ENV, "lots")
    with pytest.raises(ValueError, match="MFSDE_MEMORY_LIMIT must be a number of bytes"):
        _memory.available_bytes()


def test_the_posterior_counts_its_draws(fe, low_limit):
    with pytest.raises(MemoryError, match=r"sample_particle_posterior with 50 particles x 4 chains.*num_samples"):
        mfsde.sample_particle_posterior(fe, jax.random.key(0), 50, num_samples=1000)
