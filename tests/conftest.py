import os

import pytest

# Tests run offline on CPU: no hub, DeepSpeed on its CPU accelerator, quiet tokenizers.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (its CPU twin runs)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
