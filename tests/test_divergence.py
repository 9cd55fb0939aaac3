"""Divergence is caught where it happens (issue 12): the run stops, and says when and why.

A linear unit on inputs of scale 10 has drift curvature λ_max ≈ 158, so explicit steps of
0.5 (h·λ_max ≈ 79 > 2) blow up. At β = ∞ full-batch SGD without noise or prior drift is
exactly Euler on Langevin's ODE: the jump engine (SGD) and the diffrax engine (Langevin)
must report the same step, and the run must stop there (num_steps under jit).
"""

import jax
import numpy as np
import pytest

import mfsde

H, T1 = 0.5, 200.0


@pytest.fixture(scope="module")
def wide(linear):
    x, y = linear.make_data(jax.random.key(0), num_data=50, dim=3)
    fe = mfsde.FreeEnergy(linear.make_unit(1.0), 10 * x, y, beta=float("inf"))
    return fe, fe.prior_sample(jax.random.key(1), 16)


def test_langevin_and_sgd_stop_at_the_same_step(wide, tmp_path):
    fe, p0 = wide
    with pytest.raises(mfsde.DivergenceError, match=r"non-finite at t = .* \(step \d+ of dt0 = 0.5\).*dt0 < ") as lv:
        mfsde.langevin(fe, jax.random.key(2), p0, t1=T1, dt0=H)
    with pytest.raises(mfsde.DivergenceError, match="step_size < ") as sg:
        mfsde.sgd(fe, jax.random.key(2), p0, num_steps=int(T1 / H), step_size=H, noise=False, prior_drift=False)
    # wfr at α = 0 is the same Euler step; its hint is λ_max of the weighted drift
    with pytest.raises(mfsde.DivergenceError, match="dt0 < ") as wf:
        mfsde.wfr(fe, jax.random.key(2), p0, t1=T1, dt0=H, alpha=0.0, diagnostics=False)
    step = lv.value.step
    assert 0 < step < T1 / H and sg.value.step == step and lv.value.time == pytest.approx(step * H)
    # (its sweep sums Ψ's terms in another order; near 1e308 that moves the overflow by a step)
    assert abs(wf.value.step - step) <= 1 and "at the last finite state" in str(wf.value)
    for err in (lv.value, sg.value):
        part = err.trajectory
        assert part.ts.size and np.all(np.asarray(part.ts) < err.time)
        assert part.observables["risk"].shape == part.ts.shape
        # both partial trajectories end in the last finite state, one step before, and the
        # same one: at β = ∞ without prior drift SGD is Euler on Langevin's ODE
        assert np.all(np.isfinite(np.asarray(part.particles))) and err.columns == ("theta",)
    np.testing.assert_allclose(lv.value.trajectory.particles, sg.value.trajectory.particles, rtol=1e-9)
    # Langevin names the drift (it overflows far out) and the instability behind it; SGD its jump
    assert lv.value.quantity == "drift" and "unstable steps blew the state up" in str(lv.value)
    assert sg.value.quantity == "jump" and "at the last finite state" in str(sg.value)
    # under jit it cannot raise: the trajectory says when, it stopped there, and summary says so
    tr = jax.jit(lambda k: mfsde.langevin(fe, k, p0, t1=T1, dt0=H))(jax.random.key(2))
    assert float(tr.diverged_at) == pytest.approx(step * H) and int(tr.num_steps) == step
    s = mfsde.summary(mfsde.to_inference_data(tr, fe), fe)
    assert not s.converged and "diverged" in s.reason and np.isnan(s.w2_to_prior)
    # a checkpointed run keeps its last good checkpoint
    path = tmp_path / "ck.npz"
    with pytest.raises(mfsde.DivergenceError, match="keeps the state after segment"):
        mfsde.langevin(fe, jax.random.key(2), p0, t1=T1, dt0=H, checkpoint_every=40, checkpoint_path=path)
    with np.load(path) as f:
        assert int(f["next_segment"]) == step // 40 and np.all(np.isfinite(f["particles"]))


def test_a_drift_undefined_at_ordinary_states_is_named(linear):
    """A unit that is undefined where the particles start (|w|² > 100, far from its prior's
    draws, which are checked when it is traced): the drift, not the step, is named."""
    import numpyro
    import numpyro.distributions as dist

    def unit(x):
        w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        return jax.numpy.sqrt(100.0 - w @ w) * (x @ w)

    x, y = linear.make_data(jax.random.key(0), num_data=20, dim=3)
    fe = mfsde.FreeEnergy(unit, x, y, beta=10.0)
    with pytest.raises(mfsde.DivergenceError, match="at a state of ordinary size") as err:
        mfsde.langevin(fe, jax.random.key(1), 10.0 * jax.numpy.ones((8, 3)), t1=1.0, dt0=0.1)
    assert err.value.quantity == "drift" and err.value.step == 1 and err.value.time == pytest.approx(0.1)


def test_a_non_finite_noise_scale_is_named():
    """drive itself: a finite drift with a noise scale that is NaN from t = 0.5 on."""
    from mfsde.dynamics import ParticleSDE, drive

    sde = ParticleSDE(lambda t, y, a: -y, lambda t: jax.numpy.where(t < 0.5, 1.0, jax.numpy.nan))
    with pytest.raises(mfsde.DivergenceError, match="noise scale") as err:
        drive(sde, jax.random.key(0), jax.numpy.ones((4, 2)), t0=0.0, t1=1.0, dt0=0.1,
              solver=__import__("diffrax").Euler(), observables=lambda t, y, a: {"m": y.mean()},
              state_columns=(("theta", 1), ("weight", 1)))
    assert err.value.quantity == "noise" and err.value.columns == ("theta", "weight")
    assert err.value.time == pytest.approx(0.6) and np.all(np.isfinite(np.asarray(err.value.trajectory.particles)))
