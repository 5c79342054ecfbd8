"""One module per model family: each builds a tiny random-weight model inside its real diffusers pipeline and
defines ``TINY_PIPELINES = {family: (build, call, cfg_as_two_calls)}`` (collected by tests/tiny_diffusers.py)."""
