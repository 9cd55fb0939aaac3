"""The README's "add a family" example runs as written and has the right stationary law.

Kinetic Langevin on the linear-Gaussian model: the exact N-particle law p_N ∝ exp(−βE) is
Gaussian with the mean-field fixed point m* as its mean at every N (a quadratic energy's
mean is its mode, all θ_i = m*), and the velocities are Maxwellian, N(0, I/β), independent
of the positions.
"""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np

import mfsde

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _example() -> dict:
    text = README.read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "def kinetic_langevin" in b)
    namespace: dict = {}
    exec(compile(block, str(README), "exec"), namespace)
    return namespace


def test_readme_kinetic_langevin_reaches_its_stationary_law():
    kinetic_langevin = _example()["kinetic_langevin"]
    lg = mfsde.load_model("linear_gaussian")
    beta, n = 4.0, 1000
    fe = lg.free_energy(num_data=64, dim=2, beta=beta)  # x64: tests/conftest.py
    theta0 = fe.prior_sample(jax.random.key(1), n)
    traj = kinetic_langevin(fe, jax.random.key(2), theta0, t1=30.0, dt0=0.02)
    assert traj.run.family == "kinetic_langevin" and traj.run.option("gamma") == 1.0
    assert traj.particles.theta.shape == traj.particles.v.shape == (n, fe.dim)
    assert traj.observables["risk"].shape == traj.ts.shape
    theta, v = np.asarray(traj.particles.theta), np.asarray(traj.particles.v)
    m_star = lg.fixed_point_mean(fe.x, fe.y, beta)
    # The cloud's mean: its covariance under p_N is at most I/N per coordinate (the
    # interaction only shrinks it), so 4/√N bounds it at 4 s.e.; Euler's O(h) bias on top.
    np.testing.assert_allclose(theta.mean(0), m_star, atol=4 / np.sqrt(n) + 0.02)
    # Maxwellian velocities: mean of v² over N·D draws is 1/β with s.e. √2/(β √(N D)); Euler
    # inflates an OU variance by 1/(1 − γh/2) ≈ 1% at h = 0.02: 5 s.e. + 2%.
    se = np.sqrt(2.0) / beta / np.sqrt(v.size)
    assert abs(np.mean(v**2) - 1 / beta) < 5 * se + 0.02 / beta, (np.mean(v**2), 1 / beta)
    assert abs(float(jnp.mean(v))) < 5 / np.sqrt(beta * v.size)
