"""Shared fixtures: one offline MNIST preparation and one cache dir per test session.

Nothing is taken from ~/.cache: the session builds what it needs in a temporary dir. That
includes a JAX persistent compilation cache, shared by this process and every job or tool
subprocess a test starts (through the environment): a tiny `main` run takes 9 s instead of
19 s once its programs are compiled (Intel Xeon, 2 cores). Results are the same
executables, so values do not change; the first test to compile a program pays for it.
"""

import os
import subprocess
import sys

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session", autouse=True)
def jax_compilation_cache(tmp_path_factory) -> str:
    """A session-wide persistent compilation cache (this process and its subprocesses)."""
    import jax

    path = str(tmp_path_factory.mktemp("jax_compilation_cache"))
    settings = {
        "jax_compilation_cache_dir": path,
        "jax_persistent_cache_min_compile_time_secs": 0,
        "jax_persistent_cache_min_entry_size_bytes": 0,
    }
    for name, value in settings.items():
        os.environ[name.upper()] = str(value)
        jax.config.update(name, value)
    return path


@pytest.fixture(scope="session", autouse=True)
def session_tmpdir(tmp_path_factory) -> str:
    """TMPDIR of this process and its subprocesses: TFDS leaves one empty `tmp*tfds` dir per
    dataset builder it opens (`DatasetInfo.initialize_from_bucket`); they land in pytest's
    temp tree, not in /tmp."""
    import tempfile

    path = str(tmp_path_factory.mktemp("tmpdir"))
    os.environ["TMPDIR"] = path
    tempfile.tempdir = path
    return path


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


# --- a trained tiny workdir and user inputs, for the tools ------------------------------------


@pytest.fixture(scope="session")
def tool_workdir(session_cache, tmp_path_factory) -> str:
    """A tiny run (2 steps, checkpoints at 1 and 2, no sample grid) trained in-process."""
    from configs import mnist
    from semantica_jax import train

    config = mnist.get_config("tiny")
    config.cache_dir = session_cache
    config.train.num_steps = 2
    config.train.checkpoint_every = 1
    config.train.eval_every = 0
    path = str(tmp_path_factory.mktemp("tools_run"))
    train.train_and_evaluate(config, path)
    return path


@pytest.fixture(scope="session")
def tool_inputs(tmp_path_factory) -> dict[str, str]:
    """A grey PNG at model size, an RGB JPEG of another size, a float .npy, a corrupt PNG
    and a .npy holding a batch instead of one image."""
    import numpy as np
    from PIL import Image

    size = 28
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    paths = {
        "png": str(d / "a.png"),
        "jpg": str(d / "b.jpg"),
        "npy": str(d / "c.npy"),
        "bad": str(d / "bad.png"),
        "bad_npy": str(d / "bad.npy"),
    }
    Image.fromarray(rng.integers(0, 256, (size, size), np.uint8)).save(paths["png"])
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), np.uint8)).save(paths["jpg"])
    np.save(paths["npy"], rng.uniform(-1, 1, (size, size, 1)).astype(np.float32))
    with open(paths["bad"], "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n truncated")
    np.save(paths["bad_npy"], np.zeros((2, size, size, 1), np.float32))
    return paths


@pytest.fixture(scope="session")
def run_tool():
    """run_tool(name, *args) -> CompletedProcess of `python -m semantica_jax.tools.<name>`."""

    def run(module: str, *args: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
        env["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
        return subprocess.run(
            [sys.executable, "-m", f"semantica_jax.tools.{module}", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    return run


def tool_ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="session")
def ok():
    """ok(proc) asserts exit 0 (showing stderr otherwise) and returns proc."""
    return tool_ok


# --- tiny encoders and synthetic images -------------------------------------------------------


@pytest.fixture(scope="session")
def small_vit():
    """A 1-block, 16-wide ViT encoder config (28x28x1, patch 4 -> 49 tokens)."""
    from semantica_jax.models.vit import ViTConfig

    return ViTConfig(
        image_size=28,
        channels=1,
        patch_size=4,
        width=16,
        depth=1,
        heads=2,
        mlp_ratio=2,
        embed_dim=8,
    )


@pytest.fixture(scope="session")
def config_vit():
    """The encoder of configs/mnist.py:tiny."""
    from configs import mnist
    from semantica_jax.models.vit import ViTConfig

    return ViTConfig.from_config(mnist.get_config("tiny").encoder, 28, 1)


@pytest.fixture(scope="session")
def make_bundle():
    """make_bundle(vit, seed=0, path='', key='k') -> a randomly initialised EncoderBundle."""
    import jax

    from semantica_jax.encoder import bundle as bundle_lib

    def make(vit, seed: int = 0, path: str = "", key: str = "k"):
        model = vit.module()
        params = jax.device_get(bundle_lib.init_params(model, jax.random.key(seed)))
        return bundle_lib.EncoderBundle(model, params, path, key, bundle_lib.hash_params(params))

    return make


def _bars(num: int, seed: int):
    """Two-class synthetic set: class 0 = a vertical bar, class 1 = a horizontal bar.

    Returns uint8 [num, 28, 28, 1] (random position, length and noise) and int32 labels.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = (np.arange(num) % 2).astype(np.int32)
    images = rng.integers(0, 40, size=(num, 28, 28), dtype=np.int32)
    for i, label in enumerate(labels):
        pos, lo = rng.integers(5, 21), rng.integers(2, 8)
        hi = lo + rng.integers(12, 19)
        if label == 0:
            images[i, lo:hi, pos : pos + 3] = 255
        else:
            images[i, pos : pos + 3, lo:hi] = 255
    return images.astype(np.uint8)[..., None], labels


@pytest.fixture(scope="session")
def bars():
    """bars(num, seed) -> (uint8 [num, 28, 28, 1], int32 [num]): two separable classes."""
    return _bars


@pytest.fixture(scope="session")
def random_digits():
    """random_digits(num, seed) -> uint8 [num, 28, 28, 1] of uniform noise."""
    import numpy as np

    def make(num: int, seed: int):
        return np.random.default_rng(seed).integers(0, 256, (num, 28, 28, 1), dtype=np.uint8)

    return make


@pytest.fixture(scope="session")
def tiny_encoder_cfg():
    """tiny_encoder_cfg(**overrides) -> the tiny config's encoder section, set for 40 quick
    steps, with overrides."""
    from configs import mnist

    def make(**overrides):
        cfg = mnist.get_config("tiny").encoder
        cfg.unlock()
        cfg.update(
            dict(num_steps=40, batch_size=16, learning_rate=3e-3, warmup_steps=5, log_every=20)
        )
        cfg.update(overrides)
        return cfg

    return make


@pytest.fixture
def encode_calls(monkeypatch):
    """Counts encoder batches the embedding cache actually computes (a reused cache: none)."""
    from semantica_jax.encoder import embeddings

    calls = []
    real = embeddings.iter_encode

    def counting(*args, **kwargs):
        for item in real(*args, **kwargs):
            calls.append(len(item[2]))
            yield item

    monkeypatch.setattr(embeddings, "iter_encode", counting)
    return calls


# --- the main job as a subprocess (each run chooses its device count) -----------------------


def _main_env(devices: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    return env


def _main_args(workdir, cache, *overrides) -> list[str]:
    return [
        sys.executable,
        "-m",
        "semantica_jax.main",
        "--config=configs/mnist.py:tiny",
        f"--workdir={workdir}",
        f"--config.cache_dir={cache}",
        *overrides,
    ]


def _run_main(workdir, cache, *overrides, devices=1, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        _main_args(workdir, cache, *overrides),
        cwd=ROOT,
        env=_main_env(devices),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def main_env():
    """main_env(devices) -> the environment of a main subprocess on `devices` CPU devices."""
    return _main_env


@pytest.fixture(scope="session")
def main_args():
    """main_args(workdir, cache, *overrides) -> argv of `main` on the tiny config."""
    return _main_args


@pytest.fixture(scope="session")
def run_main():
    """run_main(workdir, cache, *overrides, devices=1, check=True) -> CompletedProcess."""
    return _run_main


def _two_class_images(n: int, seed: int, size: int = 12):
    """uint8 [n,size,size,1]: class 0 has a bright left half, class 1 a bright right half."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n).astype(np.int32)
    images = rng.integers(0, 60, size=(n, size, size, 1))
    half = size // 2
    for i, label in enumerate(labels):
        cols = slice(0, half) if label == 0 else slice(half, size)
        images[i, :, cols] += 150
    return images.astype(np.uint8), labels


@pytest.fixture(scope="session")
def two_class_images():
    """two_class_images(n, seed, size=12) -> (uint8 [n,size,size,1], int32 [n]), separable."""
    return _two_class_images


# --- tiny training runs and their checkpoints (test_train.py, test_faults.py) ------------------


def _restore(workdir, item="params", step=None):
    import jax
    import numpy as np

    from semantica_jax.utils import checkpointing

    tree, step = checkpointing.restore_params(
        os.path.join(workdir, "checkpoints"), step=step, item=item
    )
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        "/".join(str(getattr(p, "key", p)) for p in path): np.asarray(leaf) for path, leaf in leaves
    }, step


@pytest.fixture(scope="session")
def restore():
    """restore(workdir, item="params", step=None) -> ({"a/b/kernel": array}, step)."""
    return _restore


def _assert_same_run(workdir_a, workdir_b):
    """Same final loss and parameters (to float tolerance: other devices, other order)."""
    import json

    import numpy as np

    def final(workdir):
        summary = json.load(open(os.path.join(workdir, "summary.json")))
        return summary["metrics"]["loss"], _restore(workdir)[0]

    (loss_a, params_a), (loss_b, params_b) = final(workdir_a), final(workdir_b)
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-4)
    for k in params_a:
        np.testing.assert_allclose(params_a[k], params_b[k], rtol=1e-3, atol=1e-4, err_msg=k)


@pytest.fixture(scope="session")
def assert_same_run():
    """assert_same_run(workdir_a, workdir_b): same final loss and parameters."""
    return _assert_same_run


@pytest.fixture(scope="session")
def tiny_run(session_cache, tmp_path_factory):
    """One complete tiny run on 1 device (6 steps, checkpoints at 3 and 6, samples at 6)."""
    workdir = str(tmp_path_factory.mktemp("tiny"))
    _run_main(workdir, session_cache)
    return workdir
