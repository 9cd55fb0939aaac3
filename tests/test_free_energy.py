import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mfsde


@pytest.fixture(scope="module")
def nonlinear(neuron):
    x, y = neuron.make_data(jax.random.key(0), num_data=13, dim=3, noise=0.1)
    fe = mfsde.FreeEnergy(neuron.make_unit(1.0, 1.0), x, y, beta=7.0)
    particles = fe.prior_sample(jax.random.key(1), 6) * 2.0
    return fe, particles


@pytest.fixture(scope="module")
def lin(linear):
    x, y = linear.make_data(jax.random.key(2), num_data=40, dim=3)
    fe = mfsde.FreeEnergy(linear.make_unit(0.7), x, y, beta=3.0)
    return fe, fe.prior_sample(jax.random.key(3), 9)


def manual_features(fe, particles):
    v = fe.unflatten(particles)
    return v["a"][:, None] * jnp.tanh(v["w"] @ fe.x.T)


def test_output_risk_potential_match_formulas(nonlinear):
    fe, th = nonlinear
    f = manual_features(fe, th).mean(0)
    np.testing.assert_allclose(fe.output(th), f, rtol=1e-12)
    np.testing.assert_allclose(fe.risk(th), jnp.mean((f - fe.y) ** 2), rtol=1e-12)
    theta = th[0] + 0.3
    v = fe.unit.constrain(theta)
    psi = jnp.mean((f - fe.y) * v["a"] * jnp.tanh(fe.x @ v["w"]))
    np.testing.assert_allclose(fe.potential(theta, th), psi, rtol=1e-12)
    np.testing.assert_allclose(fe.potential(theta, f), psi, rtol=1e-12)
    xn = jnp.ones((4, 3))
    np.testing.assert_allclose(fe.output(th, xn), (v := fe.unflatten(th))["a"] @ jnp.tanh(v["w"] @ xn.T) / 6, rtol=1e-12)


def test_linear_potential_closed_form(lin, linear):
    fe, th = lin
    sigma, c = linear.moments(fe.x, fe.y)
    g = sigma @ np.asarray(th.mean(0)) - c          # Ψ(θ; ρ) = (Σ̂m − ĉ)·θ
    theta = jnp.array([0.3, -1.0, 2.0])
    np.testing.assert_allclose(fe.potential(theta, th), g @ np.asarray(theta), rtol=1e-10)
    np.testing.assert_allclose(fe.grad_potential(th), np.broadcast_to(g, th.shape), rtol=1e-10, atol=1e-12)


def test_grad_potential_equals_per_particle_grad(nonlinear):
    fe, th = nonlinear
    f = fe.output(th)  # ρ frozen: ∇Ψ(θ_i; ρ) does not differentiate through f_ρ
    ref = jax.vmap(jax.grad(lambda t: fe.potential(t, f)))(th)
    np.testing.assert_allclose(fe.grad_potential(th), ref, rtol=1e-10, atol=1e-13)
    g, out = fe.grad_potential_and_output(th)
    np.testing.assert_allclose(out, f, rtol=1e-12)


@pytest.mark.parametrize("chunk", [1, 4, 13, 100])
def test_chunked_equals_unchunked(nonlinear, chunk):
    fe, th = nonlinear
    fc = mfsde.FreeEnergy(fe.unit, fe.x, fe.y, beta=fe.beta, chunk_size=chunk)
    # float64: agreement to ~1e-13 relative (summation order differs only)
    np.testing.assert_allclose(fc.output(th), fe.output(th), rtol=1e-12)
    np.testing.assert_allclose(fc.risk(th), fe.risk(th), rtol=1e-12)
    np.testing.assert_allclose(fc.grad_potential(th), fe.grad_potential(th), rtol=1e-11, atol=1e-14)
    xn = jax.random.normal(jax.random.key(5), (7, 3))
    np.testing.assert_allclose(fc.output(th, xn), fe.output(th, xn), rtol=1e-12)


def test_chunked_memory_is_bounded(neuron):
    # XLA's own buffer accounting: the chunked drift must not allocate an (N, P) array.
    n, p, chunk = 256, 4096, 64
    x, y = neuron.make_data(jax.random.key(0), num_data=p, dim=8)
    th = jnp.zeros((n, 9))
    temp = {}
    for c in (None, chunk):
        fe = mfsde.FreeEnergy(neuron.unit, x, y, beta=10.0, chunk_size=c)
        temp[c] = jax.jit(fe.grad_potential).lower(th).compile().memory_analysis().temp_size_in_bytes
    assert temp[None] >= n * p * 8
    assert temp[chunk] < n * p * 8 / 8


def test_gibbs_logdensity(nonlinear):
    fe, th = nonlinear
    theta = th[1] - 0.2
    expected = fe.unit.prior_logdensity(theta) - fe.beta * fe.potential(theta, th)
    np.testing.assert_allclose(fe.gibbs_logdensity(th)(theta), expected, rtol=1e-12)
    np.testing.assert_allclose(fe.gibbs_logdensity(fe.output(th))(theta), expected, rtol=1e-12)
    inf = mfsde.FreeEnergy(fe.unit, fe.x, fe.y, beta=math.inf)
    with pytest.raises(ValueError, match="degenerate"):
        inf.gibbs_logdensity(th)
    with pytest.raises(ValueError, match="output must have shape"):
        fe.gibbs_logdensity(jnp.zeros(5))


def test_jit_vmap_every_method(nonlinear):
    fe, th = nonlinear
    batch = jnp.stack([th, th + 0.1, th - 0.1])
    np.testing.assert_allclose(jax.jit(fe.risk)(th), fe.risk(th), rtol=1e-12)
    np.testing.assert_allclose(jax.vmap(fe.risk)(batch), [fe.risk(b) for b in batch], rtol=1e-12)
    np.testing.assert_allclose(jax.jit(jax.vmap(fe.output))(batch)[2], fe.output(batch[2]), rtol=1e-12)
    np.testing.assert_allclose(jax.jit(fe.grad_potential)(th), fe.grad_potential(th), rtol=1e-12)
    np.testing.assert_allclose(jax.vmap(fe.potential, (0, None))(th, th)[3], fe.potential(th[3], th), rtol=1e-12)
    logp = fe.gibbs_logdensity(th)
    np.testing.assert_allclose(jax.jit(jax.vmap(logp))(th)[0], logp(th[0]), rtol=1e-12)
    # FreeEnergy is a pytree: it can be passed through jit as an argument.
    np.testing.assert_allclose(jax.jit(lambda fe, p: fe.risk(p))(fe, th), fe.risk(th), rtol=1e-12)
    assert jax.jit(lambda k: fe.prior_sample(k, 5))(jax.random.key(0)).shape == (5, fe.dim)
    assert jax.jit(fe.unflatten)(th)["w"].shape == (6, 3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(y=np.zeros(12)), r"y must have shape \(P,\)"),
        (dict(y=np.zeros((13, 1))), r"y must have shape \(P,\)"),
        (dict(x=np.full((13, 3), np.nan)), "x contains non-finite"),
        (dict(y=np.r_[np.zeros(12), np.inf]), "y contains non-finite"),
        (dict(beta=0.0), "beta must be > 0"),
        (dict(beta=-1.0), "beta must be > 0"),
        (dict(beta=float("nan")), "beta must be > 0"),
        (dict(beta="hot"), "beta must be a positive number"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(chunk_size=2.5), "chunk_size"),
    ],
)
def test_bad_inputs(nonlinear, kwargs, match):
    fe, _ = nonlinear
    args = dict(x=fe.x, y=fe.y, beta=1.0) | kwargs
    with pytest.raises(ValueError, match=match):
        mfsde.FreeEnergy(fe.unit, **args)


def test_bad_particles(nonlinear):
    fe, th = nonlinear
    with pytest.raises(ValueError, match=r"particles must have shape \(N, 4\)"):
        fe.risk(th[:, :3])
    with pytest.raises(ValueError, match="particles must have shape"):
        fe.grad_potential(th[0])
    assert mfsde.FreeEnergy(fe.unit, fe.x, fe.y, beta=math.inf).beta == math.inf


def _tanh_unit(form):
    """The planted-neuron unit a·tanh(⟨w, x⟩), its contraction written three ways (and once
    inside a nested jit, and once with a ReLU, a custom_jvp primitive, on top)."""
    import numpyro
    import numpyro.distributions as dist

    contract = {"w @ x.T": lambda w, x: w @ x.T, "x @ w": lambda w, x: x @ w,
                "einsum": lambda w, x: jnp.einsum("d,pd->p", w, x),
                "jit(x @ w)": jax.jit(lambda w, x: x @ w),
                "relu(x @ w)": lambda w, x: jax.nn.relu(x @ w) - jax.nn.relu(-(x @ w))}[form]

    def unit(x):
        a = numpyro.sample("a", dist.Normal(0.0, 1.0))
        w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[-1]]).to_event(1))
        return a * jnp.tanh(contract(w, x))

    return unit


UNIT_FORMS = ["w @ x.T", "x @ w", "einsum", "jit(x @ w)", "relu(x @ w)"]


@pytest.fixture(scope="module")
def unit_forms(nonlinear):
    fe0, _ = nonlinear
    return {form: mfsde.FreeEnergy(_tanh_unit(form), fe0.x, fe0.y, beta=fe0.beta, chunk_size=None)
            for form in UNIT_FORMS}


def test_unit_forms_give_identical_results(nonlinear, unit_forms):
    """However the contraction is written (x @ w is rewritten θ-first at trace time), the
    output, ∇Ψ and Ψ agree to float64 rounding (the same sums in another order), and with
    the plain vmap of the unit. (relu(z) − relu(−z) = z exactly, so that form too.)"""
    fe0, th = nonlinear
    ref = [fe0.potentials_grads_and_output(th), jax.vmap(fe0.unit.apply, in_axes=(0, None))(th, fe0.x)]
    for form, fe in unit_forms.items():
        got = [fe.potentials_grads_and_output(th), fe.features(th, fe.x)]
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
            np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15, err_msg=form)


def _np_transposes(jaxpr, n, p):
    """The transposes of an array with both an N and a P axis in a jaxpr, nested ones included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "transpose" and {n, p} <= set(eqn.outvars[0].aval.shape):
            found.append(eqn.outvars[0].aval.shape)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            found += _np_transposes(sub, n, p)
    return found


def test_no_particle_by_data_transpose_in_a_step(nonlinear, unit_forms):
    """The mechanism, not only the values: the gradient pass of every form has no (N, P)
    transpose, while the unit's plain vmap (the layout JAX's batching gives x @ w) has."""
    fe0, th = nonlinear
    n, p = th.shape[0], fe0.num_data
    for form, fe in unit_forms.items():
        assert _np_transposes(jax.make_jaxpr(fe.potentials_grads_and_output)(th).jaxpr, n, p) == [], form
    plain = unit_forms["x @ w"]
    vjp_plain = jax.make_jaxpr(lambda t: jax.vjp(jax.vmap(plain.unit.apply, in_axes=(0, None)), t, plain.x))(th)
    assert _np_transposes(vjp_plain.jaxpr, n, p)
