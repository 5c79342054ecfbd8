import os

import pytest

@pytest.fixture(scope="module", autouse=True)
def hostile_environment():
    """Nothing is downloaded, and the denoisers of the embedded models count their forwards (the harness's guard)."""
    from hostile_harness import install_forward_guard

    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    restore = install_forward_guard()
    yield
    restore()  # the tests after this folder run the real forwards
    if old is None:
        os.environ.pop("HF_HUB_OFFLINE", None)
    else:
        os.environ["HF_HUB_OFFLINE"] = old
