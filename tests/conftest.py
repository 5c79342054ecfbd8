import pytest


@pytest.fixture(scope="session")
def random_pipe():
    """An untrained pipeline with the embedded architecture (fast to build, deterministic)."""
    from diffcache.embedded.t2v.pipeline import TinyShapesT2VPipeline

    pipe = TinyShapesT2VPipeline.from_scratch(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def shipped_pipe():
    import diffcache

    pipe = diffcache.load_pipeline("tiny-shapes-t2v")
    pipe.set_progress_bar_config(disable=True)
    return pipe
