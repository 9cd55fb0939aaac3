"""The convergence verdict judged on the slowest observable (float64)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mfsde
from mfsde.diagnostics import equilibration


def _ar1(key, chains, n, rho):
    """Stationary AR(1) series x_{t+1} = ρ x_t + sqrt(1 − ρ²) ε (IAT (1 + ρ)/(1 − ρ) saves)."""
    eps = np.asarray(jax.random.normal(key, (chains, n)))
    x = np.zeros((chains, n))
    x[:, 0] = eps[:, 0]
    for t in range(1, n):
        x[:, t] = rho * x[:, t - 1] + math.sqrt(1 - rho**2) * eps[:, t]
    return x


def test_equilibration_on_known_series():
    """A stationary AR(1) with ρ = 0.8 (IAT 9 saves) over 400 saves and 2 chains: stationary,
    IAT within a factor 2 of 9 saves; the same plus a decaying transient of 10 sd that is
    still 3 sd at the end: not; too short (40 saves): not, for want of effective samples;
    a slow series (ρ = 0.995) that wanders within a given finite-N noise band: stationary."""
    ts = np.arange(400.0)
    x = _ar1(jax.random.key(0), 2, 400, 0.8)
    v = equilibration(x, ts, name="x")
    assert v.stationary and 4.5 < v.iat < 18, v
    relaxing = x + 10 * np.exp(-ts / 330)
    v = equilibration(relaxing, ts, name="x")
    assert not v.stationary and "x" in v.reason, v
    assert not equilibration(x[:, :40], ts[:40], name="x").stationary
    slow = 0.05 * _ar1(jax.random.key(1), 2, 400, 0.995)
    assert not equilibration(slow, ts, name="m").stationary
    assert equilibration(slow, ts, name="m", law_scale=0.05).stationary


@pytest.fixture(scope="module")
def planted(neuron):
    x, y = neuron.make_data(jax.random.key(0), num_data=128, dim=4)
    return mfsde.FreeEnergy(neuron.make_unit(1.0, 1.0), x, y, beta=100.0)


def test_slow_a_marginal_named_then_converged(planted):
    """Planted neuron, β = 100, N = 512, the output weights started 3x too wide: by t = 100 the
    risk is stationary but the a-marginal still relaxes at the prior's rate 1/(β s_a²): not
    converged, naming mean_sq[a]. The same run continued to t = 3000: converged."""
    fe = planted
    p0 = jax.vmap(lambda k: fe.prior_sample(k, 512))(jax.random.split(jax.random.key(1), 2))
    p0 = p0.at[..., 0].multiply(3.0)
    keys = jax.random.split(jax.random.key(2), 2)
    # the a-marginal's moments are always saved; the in-run k-NN/Stein diagnostics are not needed
    early = mfsde.langevin(fe, keys, p0, t1=100.0, dt0=0.1, diagnostics=False)
    conv = mfsde.convergence(mfsde.to_inference_data(early, fe))
    verdicts = {v.name: v for v in conv.observables}
    assert verdicts["risk"].stationary
    assert not conv.converged and not verdicts["mean_sq[a]"].stationary
    assert "mean_sq[a]" in conv.reason
    summary = mfsde.summary(mfsde.to_inference_data(early, fe))
    assert not summary.converged and "mean_sq[a]" in summary.reason
    more = mfsde.langevin(fe, jax.random.split(jax.random.key(3), 2), early.particles, t0=100.0, t1=3000.0,
                          dt0=0.5, diagnostics=False)  # LM, dt0·λ_max ≈ 0.65
    done = mfsde.convergence(mfsde.to_inference_data(more, fe))
    assert done.converged, done.reason


def test_stationary_runs_rarely_called_unconverged(neuron):
    """20 runs (2 replicates each) started from exact draws of the N-particle stationary law
    (``sample_particle_posterior``): each is stationary from t = 0, so "not converged" is a
    false verdict. Allowed: at most 1 of 20 (5%). tanh units, N = 32, d = 2, P = 24, β = 20;
    runs of t1 = 2000 (LM, dt0 = 0.4, dt0·λ_max ≈ 0.5) hold ≳ 20 effective samples of every resolvable observable."""
    x, y = neuron.make_data(jax.random.key(4), num_data=24, dim=2, noise=0.1)
    fe = mfsde.FreeEnergy(neuron.make_unit(1.0, 1.0), x, y, beta=20.0)
    post = mfsde.sample_particle_posterior(fe, jax.random.key(5), 32, num_chains=4, num_warmup=300,
                                           num_samples=10, thinning=20)
    starts = jnp.asarray(post.samples).reshape(-1, 32, 3)           # 40 draws, 20 steps apart
    # all 40 replicates in one vmapped solve; run r is the pair of replicates (2r, 2r + 1)
    keys = jax.random.split(jax.random.key(100), 40)
    traj = mfsde.langevin(fe, keys, starts, t1=2000.0, dt0=0.4, progress=False)
    verdicts = []
    for r in range(20):
        pair = traj._replace(particles=traj.particles[2 * r:2 * r + 2],
                             observables={k: v[2 * r:2 * r + 2] for k, v in traj.observables.items()})
        verdicts.append(mfsde.convergence(mfsde.to_inference_data(pair, fe)))
    failures = [v.reason for v in verdicts if not v.converged]
    assert len(failures) <= 1, failures


def test_overdispersed_starts_and_dispersion(planted):
    fe = planted
    starts = mfsde.overdispersed_starts(fe, jax.random.key(6), 4, 200, spread=2.0)
    assert starts.shape == (4, 200, fe.dim)
    sd = np.asarray(starts.std(axis=1)).mean(1)
    np.testing.assert_allclose(sd / sd[1], [0.5 / 2 ** (-1 / 3), 1.0, 2 ** (1 / 3) / 2 ** (-1 / 3), 2 / 2 ** (-1 / 3)],
                               rtol=0.15)
    same = jax.vmap(lambda k: fe.prior_sample(k, 200))(jax.random.split(jax.random.key(7), 4))
    from mfsde.diagnostics._convergence import OVERDISPERSED_RATIO
    from mfsde.dynamics._starts import start_dispersion

    assert start_dispersion(starts) > OVERDISPERSED_RATIO > start_dispersion(same)
    with pytest.raises(ValueError, match="spread"):
        mfsde.overdispersed_starts(fe, jax.random.key(0), 2, 10, spread=0.5)
