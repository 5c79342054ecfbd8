"""The one call path (``diffcache.api``), its log line, the public names and the errors' one base class."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch

import diffcache
from diffcache import errors


def test_each_pipeline_call_logs_one_info_line(random_pipe, caplog):
    with diffcache.enable(random_pipe, "adacache", preset="fast"):
        with caplog.at_level(logging.INFO, logger="diffcache"):
            for steps in (6, 8):
                random_pipe("a red circle moving left", num_inference_steps=steps, guidance_scale=5.0,
                            generator=torch.Generator().manual_seed(0), output_type="latent")
    lines = [r.getMessage() for r in caplog.records if r.name == "diffcache"]
    assert len(lines) == 2
    assert lines[0].startswith("adacache:fast call 0: ") and "/6 steps computed" in lines[0]
    assert lines[1].startswith("adacache:fast call 1: ") and "/8 steps computed" in lines[1]


def test_silent_at_the_default_level(random_pipe, caplog):
    with diffcache.enable(random_pipe, "fbcache"):
        with caplog.at_level(logging.WARNING, logger="diffcache"):
            random_pipe("a red circle moving left", num_inference_steps=4, output_type="latent")
    assert not [r for r in caplog.records if r.name == "diffcache"]


def test_every_public_name_resolves_and_every_error_has_one_base():
    for name in diffcache.__all__:
        assert getattr(diffcache, name) is not None, name
    public = [getattr(errors, name) for name in errors.__all__]
    assert errors.ConfigError in public and errors.UnsupportedModelError in public
    for cls in public:
        assert issubclass(cls, (errors.DiffcacheError, errors.DiffcacheWarning)), cls
    # each error is still the built-in exception it always was
    assert issubclass(errors.ConfigError, ValueError) and issubclass(errors.UnsupportedModelError, TypeError)
    assert issubclass(errors.OutputExistsError, FileExistsError)


def test_importing_diffcache_does_not_load_torch():
    code = "import sys, diffcache, diffcache.errors; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_a_config_validates_on_construction():
    with pytest.raises(errors.ConfigError, match="threshold must be a number >= 0"):
        diffcache.FBCacheConfig(threshold=-1)
    with pytest.raises(errors.UnknownOptionError, match="has no option 'thresh'; options: "):
        diffcache.FBCacheConfig.from_preset(None, thresh=1)
    config = diffcache.FBCacheConfig(threshold=0.2)
    with pytest.raises(errors.ConfigError):
        diffcache.enable(torch.nn.Linear(1, 1), config, threshold=-1)  # overrides are validated too


def test_a_failed_replace_keeps_the_method_it_was_to_replace(random_pipe):
    def run():
        return random_pipe("a red circle moving left", num_inference_steps=6, output_type="latent",
                           generator=torch.Generator().manual_seed(0)).frames

    with diffcache.enable(random_pipe, "fbcache", threshold=0.5) as first:
        cached = run()
        with pytest.raises(errors.ConfigError, match="metric_blocks \\[99\\] out of range"):
            diffcache.enable(random_pipe, "adacache", metric_blocks=(99,), replace=True)  # fails in install()
        assert first.enabled and random_pipe.transformer._diffcache_handle is first
        assert torch.equal(run(), cached)
        assert [c.num_steps for c in first.report().calls] == [6, 6]


def test_a_cli_style_method_name_in_python_says_how_to_pass_the_preset(random_pipe):
    with pytest.raises(errors.UnknownMethodError) as info:
        diffcache.enable(random_pipe, "deepcache:uniform-3")
    assert "enable(pipe, 'deepcache', 'uniform-3')" in str(info.value)
    with pytest.raises(errors.UnknownMethodError) as info:
        diffcache.enable(random_pipe, "nope:fast")
    assert "enable(pipe" not in str(info.value) and "unknown method 'nope:fast'" in str(info.value)
