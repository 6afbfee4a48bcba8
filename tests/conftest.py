import lightning  # noqa: F401 - imported before any test captures stderr: Lightning's log handler
import pytest      # keeps the real stream, not a test's capture that is closed when the test ends
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
