"""The one driver (mfsde.dynamics.drive): jumps between SDE steps, and checkpoints for every family.

The jump contract is checked on an ODE whose Euler chain has a product closed form, so the
order (jump at the interval's start t_a, then the steps) and the times handed to the jump
and the drift are checked exactly (float64 rounding). Checkpointed runs are compared with
uninterrupted ones to float64 rounding; a chain of jumps alone (SGD) draws from the global
step index, so its checkpointed run is the unsegmented run itself.
"""

from typing import NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mfsde
from mfsde.dynamics import ParticleSDE, drive


def _mean(t, y, args):
    return {"mean": jnp.mean(y), "start_mean": jnp.mean(args)}


def test_jumps_between_steps_follow_the_product_formula():
    # Euler on dy = −t y dt: y_{k+1} = (1 − h t_k) y_k; every J steps first y ← (1 + t_a) y.
    t0, h, n, every = 0.5, 0.05, 24, 4
    sde = ParticleSDE(lambda t, y, args: -t * y, None, lambda key, t, y: (1.0 + t) * y, every)
    y0 = jnp.full((3, 2), 2.0)
    ts = t0 + h * np.array([0, 8, 15, 24])  # 15 steps is nearest the interval end 16
    traj = drive(sde, jax.random.key(0), y0, t0=t0, t1=t0 + n * h, dt0=h, solver=diffrax.Euler(), observables=_mean, ts=ts)
    factors = [(1 - h * (t0 + k * h)) * ((1 + t0 + k * h) if k % every == 0 else 1.0) for k in range(n)]
    expected = 2.0 * np.concatenate([[1.0], np.cumprod(factors)])
    np.testing.assert_allclose(traj.ts, t0 + h * np.array([0, 8, 16, 24]), rtol=1e-14)
    np.testing.assert_allclose(traj.observables["mean"], expected[[0, 8, 16, 24]], rtol=1e-12)
    np.testing.assert_allclose(traj.observables["start_mean"], 2.0)  # observables get Θ_0
    np.testing.assert_allclose(traj.particles, expected[-1], rtol=1e-12)
    with pytest.raises(ValueError, match="jump intervals"):
        drive(sde, jax.random.key(0), y0, t0=t0, t1=t0 + 22 * h, dt0=h, solver=diffrax.Euler(), observables=_mean)
    with pytest.raises(ValueError, match="one save per jump interval"):
        drive(sde, jax.random.key(0), y0, t0=t0, t1=t0 + n * h, dt0=h, solver=diffrax.Euler(), observables=_mean,
              ts=t0 + h * np.array([0, 1]))


class _Pair(NamedTuple):
    x: jax.Array  # (N, 2)
    c: jax.Array  # (N,)


class _PairDrift(eqx.Module):
    def __call__(self, t, s, args):
        return _Pair(-s.x + args.c[:, None], jnp.sum(s.x**2, axis=1))


def test_a_state_pytree_is_the_packed_array_run(tmp_path):
    """A state pytree runs as the rows of one array: an LM run of the pytree (x (N, 2), c
    (N,)) with noise on x alone, replicated over 2 keys and checkpointed, equals the plain
    run on the packed (N, 3) array bit for bit, and the trajectory's particles are the
    pytree; leaves of unequal N are refused, naming the leaf."""
    keys = jax.random.split(jax.random.key(3), 2)
    x0 = jax.random.normal(jax.random.key(4), (5, 2))
    c0 = jnp.arange(5.0)
    tree = drive(ParticleSDE(_PairDrift(), lambda t: _Pair(0.7, 0.0)), keys, _Pair(jnp.stack([x0, x0]), jnp.stack([c0, c0])),
                 t0=0.0, t1=1.0, dt0=0.1, solver=mfsde.LeimkuhlerMatthews(),
                 observables=lambda t, s, s0: {"c": jnp.mean(s.c), "x": jnp.mean(s.x)}, checkpoint_every=4,
                 checkpoint_path=tmp_path / "pair.npz")

    def packed_drift(t, y, args):
        return jnp.concatenate([-y[:, :2] + args[:, 2:], jnp.sum(y[:, :2] ** 2, axis=1, keepdims=True)], axis=1)

    y0 = jnp.concatenate([x0, c0[:, None]], axis=1)
    flat = drive(ParticleSDE(packed_drift, lambda t: jnp.array([0.7, 0.7, 0.0])), keys, jnp.stack([y0, y0]),
                 t0=0.0, t1=1.0, dt0=0.1, solver=mfsde.LeimkuhlerMatthews(),
                 observables=lambda t, y, y0: {"c": jnp.mean(y[:, 2]), "x": jnp.mean(y[:, :2])})
    assert isinstance(tree.particles, _Pair) and tree.particles.c.shape == (2, 5)
    np.testing.assert_array_equal(tree.particles.x, flat.particles[..., :2])
    np.testing.assert_array_equal(tree.particles.c, flat.particles[..., 2])
    for name in ("c", "x"):
        np.testing.assert_array_equal(tree.observables[name], flat.observables[name])
    with pytest.raises(ValueError, match="leaf 'c' has 4 particles"):
        drive(ParticleSDE(_PairDrift(), lambda t: 0.7), jax.random.key(0), _Pair(x0, c0[:4]), t0=0.0, t1=1.0, dt0=0.1,
              solver=mfsde.LeimkuhlerMatthews(), observables=lambda t, s, s0: {})


def _assert_same(a, b, rtol=1e-12):
    np.testing.assert_allclose(a.ts, b.ts, rtol=rtol)
    np.testing.assert_allclose(a.particles, b.particles, rtol=rtol, atol=1e-12)
    assert a.observables.keys() == b.observables.keys()
    for k in a.observables:
        np.testing.assert_allclose(a.observables[k], b.observables[k], rtol=rtol, atol=1e-12, err_msg=k)


def test_sgd_checkpoint_is_the_same_chain(small, tmp_path):
    # kills and resumes of every family: tests/test_faults.py
    fe, p0 = small
    kw = dict(batch_size=5, save_every=5)
    plain = mfsde.sgd(fe, jax.random.key(4), p0, num_steps=30, step_size=0.05, **kw)
    checkpointed = mfsde.sgd(fe, jax.random.key(4), p0, num_steps=30, step_size=0.05, checkpoint_every=10,
                             checkpoint_path=tmp_path / "sgd.npz", **kw)
    _assert_same(checkpointed, plain)
    with pytest.raises(ValueError, match="different run.*step_size"):
        mfsde.sgd(fe, jax.random.key(4), p0, num_steps=30, step_size=0.1, checkpoint_every=10, checkpoint_path=tmp_path / "sgd.npz", **kw)


def test_float32_save_times_overshooting_t1_are_the_end():
    """Save times read off a float32 run (0.4 is 0.40000001 in float32) are accepted at the
    span's end, within float32 rounding; a time genuinely past t1 is refused (test_boundary)."""
    from mfsde.dynamics._core import save_times

    ts = np.asarray(np.linspace(0.0, 0.4, 5), np.float32)
    assert float(ts[-1]) > 0.4
    out = save_times(ts, 0.0, 0.4, 0.1, noisy=False)
    assert out[-1] == 0.4 and np.allclose(out, np.linspace(0.0, 0.4, 5))
