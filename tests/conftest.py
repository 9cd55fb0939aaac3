"""Tests run in float64: accuracy is checked against closed forms (DESIGN.md §5)."""

import pathlib

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
