"""The documentation: every public name's runnable example, the docs pages' examples, the
API reference's coverage, the site's build, and the wheel a user installs."""

import doctest
import inspect
import os
import pathlib
import re
import subprocess
import sys
import sysconfig
import textwrap

import pytest

import mfsde

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Result types and solver components: documented by the functions that make them.
_NO_EXAMPLE = {"OptimalityCertificate", "TransportMap", "CaffarelliBound", "ValueFunction", "GibbsFlow", "CurvatureDefect", "FixedPoint", "FixedPointCheck", "GibbsNormalizer", "ParticlePosterior",
               "SelfConsistency", "SteinTest", "Trajectory", "Run", "DivergenceError", "ParticleSDE", "LeimkuhlerMatthews",
               "UnitModel"}


def _public():
    return [(name, inspect.unwrap(getattr(mfsde, name))) for name in mfsde.__all__]


def test_every_public_function_has_an_example():
    missing = [name for name, obj in _public() if name not in _NO_EXAMPLE and ">>>" not in (obj.__doc__ or "")]
    assert not missing, f"public names without a runnable example: {missing}"
    assert set(_NO_EXAMPLE) <= set(mfsde.__all__)


@pytest.mark.lane2
@pytest.mark.parametrize("name", [n for n in mfsde.__all__ if n not in _NO_EXAMPLE])
def test_public_examples_run(name):
    """Each example as a user runs it: a fresh namespace, outputs compared by doctest."""
    obj = inspect.unwrap(getattr(mfsde, name))
    parser, runner = doctest.DocTestParser(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS, verbose=False)
    test = parser.get_doctest(inspect.getdoc(obj), {}, name, inspect.getsourcefile(obj), 0)
    assert test.examples, name
    result = runner.run(test, out=lambda s: print(s, end=""))
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed (output above)"


@pytest.mark.parametrize("page", ["units.md", "reductions.md"])
def test_docs_pages_examples_run(page):
    """The "Write your own unit" page's error messages are the ones mfsde raises."""
    result = doctest.testfile(str(ROOT / "docs" / page), module_relative=False, optionflags=doctest.ELLIPSIS,
                              globs={}, report=True)
    assert result.attempted > 5 and result.failed == 0, result


def test_api_reference_lists_every_public_name():
    listed = re.findall(r"^::: mfsde\.(\w+)$", (ROOT / "docs" / "api.md").read_text(), re.M)
    assert sorted(listed) == sorted(set(listed)), "a name is listed twice"
    assert set(listed) == set(mfsde.__all__), set(listed) ^ set(mfsde.__all__)


def test_nothing_points_outside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    offenders = []
    for rel in tracked.stdout.split():
        path = ROOT / rel
        if path.suffix in (".py", ".md", ".toml", ".yml", ".cff") and path.is_file() and not path.is_symlink():
            if re.search(r"\.\./shared|DESIGN\.md", path.read_text(errors="ignore")):
                offenders.append(rel)
    assert not offenders, offenders


def test_docs_build(tmp_path):
    """The fast build (tutorials rendered without running them), strict: a warning fails it."""
    res = subprocess.run([sys.executable, "scripts/build_docs.py", "--site", str(tmp_path / "site")], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    site = tmp_path / "site"
    for page in ("index.html", "design/index.html", "units/index.html", "reductions/index.html", "api/index.html",
                 "tutorials/mmn_anisotropic/index.html", "changelog/index.html"):
        assert (site / page).is_file(), page
    api = (site / "api" / "index.html").read_text()
    for name in mfsde.__all__:
        assert f'id="mfsde.{name}"' in api, name


@pytest.mark.slowest
@pytest.mark.lane2
def test_wheel_installs_and_runs_the_readme_example(tmp_path):
    """The slowest test: build the wheel, install it (not editable) into a fresh venv, and run
    the README's first example at a tiny size there. The venv sees this environment's
    dependencies through a .pth file (no network), but not its editable mfsde (a .pth inside
    a directory added by another .pth is not executed)."""
    dist = tmp_path / "dist"
    res = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(ROOT)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    wheel, = dist.glob("mfsde-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (pathlib.Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    res = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                          str(wheel)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    example = textwrap.dedent('''
        import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
        import mfsde

        def unit(x):
            d = x.shape[-1]
            a = numpyro.sample("a", dist.Normal(0.0, 2.0))
            w = numpyro.sample("w", dist.Normal(0.0, 1 / d**0.5).expand([d]).to_event(1))
            return a * jnp.tanh(x @ w)

        x = jax.random.normal(jax.random.key(0), (64, 4)); y = jnp.tanh(x[:, 0])
        fe = mfsde.FreeEnergy(unit, x, y, beta=200.0)
        particles = fe.prior_sample(jax.random.key(1), 32)
        traj = mfsde.langevin(fe, jax.random.key(2), particles, t1=1.0, dt0=0.05, progress=False)
        assert fe.unflatten(traj.particles)["w"].shape == (32, 4)
        assert bool(jnp.all(jnp.isfinite(traj.observables["risk"])))
        gm = mfsde.load_model("gaussian_mixture")
        print(mfsde.__version__, mfsde.__file__, gm.__file__)
    ''')
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    res = subprocess.run([str(python), "-c", example], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    version, module, model = res.stdout.split()[-3:]
    assert version == mfsde.__version__
    assert module.startswith(str(venv)) and model.startswith(str(venv)), (module, model)
