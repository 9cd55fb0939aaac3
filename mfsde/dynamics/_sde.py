"""The terms a dynamics family hands the driver: ``ParticleSDE``."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx

__all__ = ["ParticleSDE", "FixedSDE"]


class ParticleSDE(eqx.Module):
    """dΘ = drift(t, Θ) dt + noise_scale(t) dB over a particle state Θ (N, D), and every
    ``jump_every`` steps a discrete jump Θ ← jump(key, t, Θ).

    ``drift(t, Θ, args) -> (N, D)`` (``args`` is the run's start Θ_0), or ``None``: no
    diffrax term, the chain is the jumps alone (then ``jump_every`` is 1). ``noise_scale(t)
    -> scalar`` (isotropic) or a (D,) row of per-coordinate scales (diagonal), or ``None``
    for an ODE. With a jump, interval m of ``jump_every`` steps, from t_a = t0 + a·dt0
    (a = m·jump_every), first applies ``jump(fold_in(key_jump, a), t_a, Θ)`` and then the
    SDE over [t_a, t_a + jump_every·dt0]; key_jump is the run's key when there is no drift
    (so step k of SGD draws from ``fold_in(key, k)``), else the second half of its split.
    All three should be equinox Modules (or other stable callables) so that repeated
    solves reuse the compiled program.
    """

    drift: Callable | None = None
    noise_scale: Callable | None = None
    jump: Callable | None = None
    jump_every: int = eqx.field(static=True, default=1)

    def __check_init__(self):
        for name in ("drift", "noise_scale", "jump"):
            if getattr(self, name) is not None and not callable(getattr(self, name)):
                raise TypeError(f"{name} must be a function (or None), got {type(getattr(self, name)).__name__}")
        if self.drift is None and self.jump is None:
            raise ValueError("a ParticleSDE needs a drift, a jump, or both")
        if not (isinstance(self.jump_every, int) and self.jump_every >= 1):
            raise ValueError(f"jump_every must be a positive integer, got {self.jump_every!r}")


class FixedSDE(eqx.Module):
    # sde_of for a family whose terms do not depend on the replicate's key
    sde: ParticleSDE

    def __call__(self, key):
        return self.sde, key
