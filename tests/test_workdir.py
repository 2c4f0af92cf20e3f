"""workdir.py: the run dir's config round trip."""

import json
import os

from semantica_jax import workdir as run_dir


def test_config_json_round_trips(tool_workdir):
    from configs import mnist

    expected = list(mnist.get_config("tiny").model.channels)
    config = run_dir.load_config(tool_workdir, cache_dir="/elsewhere")
    assert config.cache_dir == "/elsewhere"
    assert list(config.model.channels) == expected
    with open(os.path.join(tool_workdir, "config.json")) as f:
        assert json.load(f)["model"]["channels"] == expected  # tuples come back as lists
