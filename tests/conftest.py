"""Tests run in float64: accuracy is checked against closed forms (DESIGN.md §5)."""

import os
import pathlib
import subprocess
import sys

import jax
import pytest

jax.config.update("jax_enable_x64", True)

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def root():
    return ROOT


@pytest.fixture(scope="session")
def linear():
    import mfsde

    return mfsde.load_model(ROOT / "models" / "linear_gaussian.py")


@pytest.fixture(scope="session")
def neuron():
    import mfsde

    return mfsde.load_model(ROOT / "models" / "single_neuron.py")


class ScriptRunner:
    """Runs the demo, tutorials and benchmarks at smoke size in fresh float32 processes.

    They are compile-bound and mostly single-threaded, so all are started when the session
    begins and run alongside the unit tests; tests/test_scripts.py waits for each and
    checks its output. On 2 cores this takes minutes off the suite.
    """

    def __init__(self, root, runs):
        self.root, self.runs, self.procs = root, runs, {}

    def start(self, args, env=None):
        key = tuple(map(str, args))
        if key not in self.procs:
            env = dict(os.environ, **(env or {}))
            env.pop("JAX_ENABLE_X64", None)
            # smoke runs are compile-bound: XLA's backend at -O0 compiles them ~15% faster
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
            self.procs[key] = subprocess.Popen([sys.executable, *key], cwd=self.root, env=env,
                                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return self.procs[key]

    def run(self, args):
        proc = self.start(args)
        out, err = proc.communicate(timeout=1200)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def pytest_collection_modifyitems(config, items):
    config.stash[_PRESTART] = any("test_scripts.py" in item.nodeid for item in items)


_PRESTART = pytest.StashKey[bool]()


@pytest.fixture(scope="session", autouse=True)
def scripts(request, tmp_path_factory):
    runner = ScriptRunner(ROOT, tmp_path_factory.mktemp("runs"))
    if not request.config.stash.get(_PRESTART, False):
        yield runner  # started on demand, e.g. when one script test is selected
        return
    smoke = {"MFSDE_SMOKE": "1", "MFSDE_RUNS": str(runner.runs)}
    runner.start(["scripts/demo.py"], smoke)
    for script in sorted((ROOT / "tutorials").glob("*.py")):
        runner.start([str(script)], smoke)
    for args in (["bench/langevin.py", "--smoke", "--json", str(runner.runs / "bench.json")],
                 ["bench/diagnostics.py", "--smoke"], ["bench/tzen_raginsky.py", "--smoke"],
                 ["bench/fixed_point.py", "--smoke"], ["bench/sgd.py", "--smoke"], ["bench/validation.py", "--smoke"]):
        runner.start(args)
    yield runner
    for proc in runner.procs.values():
        if proc.poll() is None:
            proc.kill()
