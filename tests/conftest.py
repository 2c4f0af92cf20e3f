"""Shared fixtures: one offline MNIST preparation and one cache dir per test session.

Nothing is taken from ~/.cache: the session builds what it needs in a temporary dir.
"""

import os
import sys

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> str:
    """A cache dir (SEMANTICA cache_dir) whose tfds/ holds MNIST prepared offline."""
    from semantica_jax.data import mnist

    cache = str(tmp_path_factory.mktemp("semantica_cache"))
    mnist.prepare_mnist(os.path.join(cache, "tfds"))
    return cache


@pytest.fixture(scope="session")
def mnist_data_dir(session_cache) -> str:
    """The TFDS data dir with MNIST prepared (once per session)."""
    return os.path.join(session_cache, "tfds")
