"""Compile once, sweep freely: a change of values reuses the compiled programs.

The mechanism, not the time: ``mfsde.new_programs`` lists every program JAX lowers inside
a block (a new program is lowered whether XLA then compiles it or the persistent cache
supplies it). After one warm-up call per family, calls that change only values — β, the
data's values (a new ``FreeEnergy`` of the same shapes), dt0, t1, the step size, α, keys,
starts — must lower nothing. What is static (the unit, shapes, the number of saves, the
solver, option flags) may: the last test checks that a structural change is seen.
"""

import jax
import jax.numpy as jnp
import pytest

import mfsde


@pytest.fixture(scope="module")
def problems(neuron):
    """Two free energies of the planted neuron with the same shapes and other values
    (data, β), and 8 prior particles."""
    x, y = neuron.make_data(jax.random.key(0), num_data=20, dim=2)
    fe = mfsde.FreeEnergy(neuron.unit, x, y, beta=20.0)
    x2, y2 = neuron.make_data(jax.random.key(7), num_data=20, dim=2)
    other = mfsde.FreeEnergy(neuron.unit, x2, 0.5 * y2, beta=35.0)
    return fe, other, fe.prior_sample(jax.random.key(1), 8)


def _no_new_programs(call_warm, *calls):
    jax.block_until_ready(call_warm())
    with mfsde.new_programs() as made:
        for call in calls:
            jax.block_until_ready(call())
    assert not made, f"a value change lowered new programs: {made}"


def test_langevin_values_are_traced(problems):
    # 210 and 250 steps, 101 saves each; both runs afford in-run diagnostics (the budget's
    # k differs: 101 vs 51), so the diagnostic gate's values change too
    fe, other, p0 = problems
    moved = p0 + 0.1
    run = lambda fe, k, t1, dt0: mfsde.langevin(fe, jax.random.key(k), p0, t1=t1, dt0=dt0).particles  # noqa: E731
    assert mfsde.langevin(fe, jax.random.key(0), p0, t1=4.2, dt0=0.02).run.diagnostics_every > 0
    _no_new_programs(lambda: run(fe, 0, 4.2, 0.02),
                     lambda: run(fe, 1, 5.0, 0.02),                  # t1
                     lambda: run(fe, 2, 4.2, 0.0168),                # dt0
                     lambda: run(other, 3, 4.2, 0.02),               # β and the data's values
                     lambda: run(mfsde.FreeEnergy(fe.unit.model, fe.x, fe.y, beta=20.0), 4, 4.2, 0.02),  # the same values
                     lambda: mfsde.langevin(fe, jax.random.key(5), moved, t1=5.2, dt0=0.02, t0=1.0).particles)  # t0, start


def test_jump_families_values_are_traced(problems):
    fe, other, p0 = problems
    sgd = lambda fe, n, eta: mfsde.sgd(fe, jax.random.key(n), p0, num_steps=n, step_size=eta, batch_size=4).particles  # noqa: E731
    _no_new_programs(lambda: sgd(fe, 200, 0.05), lambda: sgd(fe, 300, 0.02), lambda: sgd(other, 200, 0.05))
    wfr = lambda fe, a, dt0: mfsde.wfr(fe, jax.random.key(3), p0, t1=2.0, dt0=dt0, alpha=a, birth_death="clone",  # noqa: E731
                                       diagnostics=False).particles.theta
    _no_new_programs(lambda: wfr(fe, 1.0, 0.02), lambda: wfr(fe, 0.5, 0.01), lambda: wfr(other, 2.0, 0.02))


def test_tzen_raginsky_values_are_traced(linear):
    fe = linear.free_energy(num_data=16, dim=2, beta=4.0)
    other = linear.free_energy(num_data=16, dim=2, beta=2.0)
    mv = lambda fe, dt0: mfsde.mckean_vlasov(fe, jax.random.key(1), 16, dt0=dt0).particles  # noqa: E731
    _no_new_programs(lambda: mv(fe, 0.05), lambda: mv(fe, 0.04), lambda: mv(other, 0.05))
    f_star = fe.x @ linear.fixed_point_mean(fe.x, fe.y, 4.0)
    pool = fe.prior_sample(jax.random.key(2), 64)
    br = lambda dt0, key: mfsde.schrodinger_bridge(fe, f_star, jax.random.key(key), 16, dt0=dt0, num_inner=8,  # noqa: E731
                                                    samples=pool, log_normalizer=0.0).particles
    _no_new_programs(lambda: br(0.05, 1), lambda: br(0.04, 2))


def test_samplers_values_are_traced(problems):
    fe, other, p0 = problems
    kw = dict(num_chains=2, num_warmup=50, num_samples=50, max_iter=2)
    fp = lambda fe, k: mfsde.sample_fixed_point(fe, jax.random.key(k), **kw).samples  # noqa: E731
    with pytest.warns(RuntimeWarning, match="did not converge"):
        _no_new_programs(lambda: fp(fe, 1), lambda: fp(other, 2))
    post = lambda fe, k: mfsde.sample_particle_posterior(fe, jax.random.key(k), 4, num_chains=2, num_warmup=50,  # noqa: E731
                                                          num_samples=50).samples
    _no_new_programs(lambda: post(fe, 1), lambda: post(other, 2))
    runs = [mfsde.langevin(fe_, jax.random.split(jax.random.key(k), 2), p0, t1=4.2, dt0=0.02, diagnostics=True)
            for fe_, k in ((fe, 3), (other, 4))]
    check = lambda fe, traj: mfsde.check_fixed_point(fe, jax.random.key(5), traj, num_warmup=50,  # noqa: E731
                                                     num_samples=50).passed
    _no_new_programs(lambda: check(fe, runs[0]), lambda: check(other, runs[1]))


def test_structure_is_static(problems):
    """A change of structure (here the number of saves) is a new program, and is seen."""
    fe, _, p0 = problems
    mfsde.langevin(fe, jax.random.key(0), p0, t1=4.2, dt0=0.02, diagnostics=False)
    with mfsde.new_programs() as made:
        mfsde.langevin(fe, jax.random.key(0), p0, t1=4.2, dt0=0.02, ts=jnp.linspace(0.0, 4.2, 11), diagnostics=False)
    assert any("run_span" in name for name in made), made
