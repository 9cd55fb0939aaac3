"""The fixed-step engine: one compiled loop for every family, keyed on structure only.

A run on fixed steps is a chain Θ_{k+1} = step_k(Θ_k), k = first .. last − 1, on the time
grid t_k = t0 + k h (h = (t1 − t0)/n for n = ⌈(t1 − t0)/dt0⌉ steps) or on a given grid
(``diffrax.StepTo``). Step k is, in this order:

- every ``jump_every`` steps a jump Θ ← jump(fold_in(key_jump, k), t_k, Θ);
- one step of a diffrax solver on dΘ = b(t, Θ) dt + g(t) dB over [t_k, t_{k+1}], its
  Brownian increment drawn from ``fold_in(key_noise, k)`` (``StepBrownian``).

Every draw depends on the step index alone, so the chain does not depend on how the run
is cut (saves, checkpoint segments) nor on the last bits of the times. What is traced and
what is static is the point of this module: the grid (t0, h, t1, n), the span (first, last,
the save steps), the key, the start and every array inside the family's terms (the data, β)
are traced values; the family's structure, the solver, the number of saves and the option
flags are the static part. A value change therefore reuses the compiled program.

The loop stops at the first step whose state is not finite and keeps the last finite
state, so a diverged run needs no replay (``Span.diverged_step`` says which step).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import tqdm
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ._solver import LeimkuhlerMatthews

__all__ = ["StepGrid", "SaveGrid", "SpanResult", "StepBrownian", "run_span", "one_step", "num_fixed_steps",
           "step_grid", "progress_bar"]


def num_fixed_steps(t0: float, t1: float, dt0: float) -> int:
    """n = ⌈(t1 − t0)/dt0⌉ fixed steps over [t0, t1] (at least one)."""
    return max(1, math.ceil((t1 - t0) / dt0 - 1e-9))


class StepGrid(eqx.Module):
    """The times of a fixed-step run, all traced: t_k = t0 + k h for k < n and t_n = t1,
    or ``times[k]`` for a given grid (``StepTo``)."""

    t0: Float[Array, ""]
    t1: Float[Array, ""]
    h: Float[Array, ""]
    num_steps: Int[Array, ""]
    times: Float[Array, " n1"] | None = None

    def time(self, k):
        k = jnp.asarray(k)
        if self.times is not None:
            return self.times[jnp.clip(k, 0, self.times.shape[0] - 1)]
        return jnp.where(k >= self.num_steps, self.t1, self.t0 + k.astype(self.h.dtype) * self.h)


def step_grid(t0: float, t1: float, dt0: float, dtype, times=None) -> StepGrid:
    """The ``StepGrid`` of n = ⌈(t1 − t0)/dt0⌉ equal steps (or of ``times``), as arrays."""
    if times is not None:
        times = jnp.asarray(times, dtype)
        n = times.shape[0] - 1
    else:
        n = num_fixed_steps(t0, t1, dt0)
    return StepGrid(jnp.asarray(t0, dtype), jnp.asarray(t1, dtype), jnp.asarray((t1 - t0) / n, dtype),
                    jnp.asarray(n, jnp.int32), times)


class SaveGrid(eqx.Module):
    """Which steps a span runs and where it saves, traced: steps first .. last − 1, the
    observables at the states after ``steps`` (T,) (a step index s means the state at t_s;
    s = first is the span's start state)."""

    first: Int[Array, ""]
    last: Int[Array, ""]
    steps: Int[Array, " t"]


class SpanResult(NamedTuple):
    """A span's end: ``state`` (the last finite one if it diverged), the observables at the
    saves (dict of (T,)), ``step`` reached, and ``diverged_step``: the step whose result
    was non-finite (−1 if none)."""

    state: Array
    observables: dict
    step: Array
    diverged_step: Array


class StepBrownian(diffrax.AbstractBrownianPath):
    """The Brownian increment of one step from its own key: W(t1) − W(t0) ~ N(0, t1 − t0),
    with the space-time Lévy area H ~ N(0, (t1 − t0)/12) for solvers that need it. Keyed
    by the step, not by the bits of its times (``diffrax.UnsafeBrownianPath``), so a run's
    noise is the same however its span is cut or its times are rounded."""

    shape: jax.ShapeDtypeStruct = eqx.field(static=True)
    levy_area: type = eqx.field(static=True)
    key: PRNGKeyArray

    @property
    def t0(self):
        return -jnp.inf

    @property
    def t1(self):
        return jnp.inf

    def evaluate(self, t0, t1=None, left=True, use_levy=False):
        del left
        dt = jnp.asarray(t1 - t0, self.shape.dtype)
        std = jnp.sqrt(dt)
        k_w, k_h = jax.random.split(self.key)
        w = std * jax.random.normal(k_w if self.levy_area is not diffrax.BrownianIncrement else self.key,
                                    self.shape.shape, self.shape.dtype)
        if not use_levy:
            return w
        if self.levy_area is diffrax.SpaceTimeLevyArea:
            return diffrax.SpaceTimeLevyArea(dt=dt, W=w, H=std / math.sqrt(12) * jax.random.normal(
                k_h, self.shape.shape, self.shape.dtype))
        return diffrax.BrownianIncrement(dt=dt, W=w)


def levy_area(solver) -> type:
    """The cheapest Brownian information ``solver`` accepts (ShARK etc. need Lévy area)."""
    minimal = getattr(solver, "minimal_levy_area", diffrax.BrownianIncrement)
    for cls in (diffrax.BrownianIncrement, diffrax.SpaceTimeLevyArea):
        if issubclass(cls, minimal):
            return cls
    raise ValueError(f"solver {type(solver).__name__} needs Levy area {minimal}, not supported")


class DiagonalDiffusion(eqx.Module):
    """g(t) as a diagonal operator: a scalar or a (D,) row of per-coordinate scales."""

    noise_scale: Callable

    def __call__(self, t, y, args):
        scale = jnp.asarray(self.noise_scale(t), y.dtype)
        return lx.DiagonalLinearOperator(jnp.broadcast_to(scale, y.shape))


def sde_terms(drift, noise_scale, key, y, solver):
    """diffrax terms of dΘ = drift dt + noise_scale dB for the step drawn from ``key``."""
    term = diffrax.ODETerm(drift)
    if noise_scale is None:
        return term
    path = StepBrownian(jax.ShapeDtypeStruct(y.shape, y.dtype), levy_area(solver), key)
    return diffrax.MultiTerm(term, diffrax.ControlTerm(DiagonalDiffusion(noise_scale), path))


def _stream_keys(sde, key):
    """(noise key, jump key): the run's key for a family with one of the two, else its split."""
    if sde.drift is None:
        return None, key
    if sde.jump is None:
        return key, None
    k_noise, k_jump = jax.random.split(key)
    return k_noise, k_jump


def _tree_where(ok, new, old):
    return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)


def _all_finite(y) -> Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(y)]))


# The bar of the run in progress: the compiled loop calls back into it (one per process).
_BAR: list = []


def _tick(step):
    if _BAR:
        bar = _BAR[-1]
        bar.update(max(0, int(step) - bar.n))


class progress_bar:
    """Context: a tqdm bar over a run's steps that the compiled loop advances at each save."""

    def __init__(self, total: int, initial: int = 0, show: bool = True):
        self.bar = tqdm.tqdm(total=total, initial=initial, unit="step", disable=not show)

    def __enter__(self):
        _BAR.append(self.bar)
        return self.bar

    def __exit__(self, *exc):
        _BAR.remove(self.bar)
        self.bar.close()


def _span_one(sde_of, solver, observables, key, y, start, grid: StepGrid, saves: SaveGrid, progress: bool):
    sde, noise_key, *own = sde_of(key)
    obs_fn = own[0] if own else observables
    k_noise, k_jump = _stream_keys(sde, noise_key)

    def terms(k, y):
        return sde_terms(sde.drift, sde.noise_scale, jax.random.fold_in(k_noise, k), y, solver)

    def advance(k, y, state):
        ta, tb = grid.time(k), grid.time(k + 1)
        if sde.jump is not None:
            jumped = lambda: sde.jump(jax.random.fold_in(k_jump, k), ta, y)  # noqa: E731
            y = jumped() if sde.jump_every == 1 else jax.lax.cond(k % sde.jump_every == 0, jumped, lambda: y)
        if sde.drift is not None:
            y, _, _, state, _ = solver.step(terms(k, y), ta, tb, y, start, state, False)
        return y, state

    first = saves.first
    if sde.drift is None:
        state = None
    elif isinstance(solver, LeimkuhlerMatthews):
        # its state is the previous step's noise: on a span that continues a run, that of
        # step first − 1, what the uncut run carried (at the run's start, step 0's own)
        k_init = jnp.maximum(first - 1, 0)
        state = solver.init(terms(k_init, y), grid.time(k_init), grid.time(k_init + 1), y, start)
    else:
        state = solver.init(terms(first, y), grid.time(first), grid.time(first + 1), y, start)

    def run_to(carry, target):
        def cond(c):
            return (c[0] < target) & (c[3] < 0)

        def body(c):
            k, y, state, bad = c
            y1, state1 = advance(k, y, state)
            ok = _all_finite(y1)
            return (jnp.where(ok, k + 1, k), _tree_where(ok, y1, y), _tree_where(ok, state1, state),
                    jnp.where(ok, bad, k))

        return jax.lax.while_loop(cond, body, carry)

    def save(carry, target):
        carry = run_to(carry, target)
        out = obs_fn(grid.time(target), carry[1], start)
        if progress:
            jax.debug.callback(_tick, target)
        return carry, out

    carry = (first, y, state, jnp.asarray(-1, first.dtype))
    # the span's end is one more target of the same loop (observed, and the row dropped):
    # one copy of the step in the program, not two
    targets = jnp.concatenate([saves.steps, jnp.reshape(saves.last, (1,))])
    (k, y, _, bad), obs = jax.lax.scan(save, carry, targets)
    return SpanResult(y, jax.tree.map(lambda a: a[:-1], obs), k, bad)


@eqx.filter_jit
def run_span(sde_of, solver, observables, key, y, start, grid: StepGrid, saves: SaveGrid, batched: bool,
             progress: bool) -> SpanResult:
    """Steps ``saves.first`` .. ``saves.last`` − 1 of the chain ``sde_of(key) -> (ParticleSDE,
    noise key[, observables])`` from state ``y`` (``start`` Θ_0 is the drift's and the
    observables' ``args``), observed at ``saves.steps``. With ``batched``, key, y and start
    carry a leading replicate axis (R,) (y and start may be shared) and the R chains are
    vmapped; the observables come back (R, T), the steps and diverged steps (R,).

    Compiled once per static structure (``sde_of``, the solver, the observables, shapes,
    ``batched``, ``progress``): the grid, the span and every array are traced."""
    def one(k, y, a):
        return _span_one(sde_of, solver, observables, k, y, a, grid, saves, progress)

    if not batched:
        return one(key, y, start)
    return jax.vmap(one, in_axes=(0, 0 if y.ndim == 3 else None, 0 if start.ndim == 3 else None))(key, y, start)


@eqx.filter_jit
def one_step(sde_of, solver, key, y, start, grid: StepGrid, k):
    """Step k alone from state y, with the run's draws and without the engine's finiteness
    guard (which keeps the old state): what a diverged run's report evaluates."""
    return _raw_step(sde_of, solver, key, y, start, grid, k)


def _raw_step(sde_of, solver, key, y, start, grid, k):
    sde, noise_key, *_ = sde_of(key)
    k_noise, k_jump = _stream_keys(sde, noise_key)
    ta, tb = grid.time(k), grid.time(k + 1)
    if sde.jump is not None:
        do = (k % sde.jump_every) == 0
        y = jnp.where(do, sde.jump(jax.random.fold_in(k_jump, k), ta, y), y)
    if sde.drift is None:
        return y
    terms = sde_terms(sde.drift, sde.noise_scale, jax.random.fold_in(k_noise, k), y, solver)
    if isinstance(solver, LeimkuhlerMatthews):
        k_init = jnp.maximum(k - 1, 0)
        t_terms = sde_terms(sde.drift, sde.noise_scale, jax.random.fold_in(k_noise, k_init), y, solver)
        state = solver.init(t_terms, grid.time(k_init), grid.time(k_init + 1), y, start)
    else:
        state = solver.init(terms, ta, tb, y, start)
    return solver.step(terms, ta, tb, y, start, state, False)[0]


def save_steps_of(ts: np.ndarray, t0: float, h: float, n: int, every: int = 1) -> np.ndarray:
    """Step indices of save times ``ts`` on the grid t0 + k h: each moved to the nearest
    multiple of ``every`` steps (a jump interval's end, where the state is the chain's own)."""
    m = n // every
    ks = np.clip(np.rint((np.asarray(ts, np.float64) - t0) / (every * h)), 0, m).astype(np.int64) * every
    return ks
