import os

import pytest

# Tests run offline on CPU: no hub (forced: a shell's HF_HUB_OFFLINE=0 must not change an outcome),
# DeepSpeed on its CPU accelerator, quiet tokenizers.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Triton kernels run under the interpreter on CPU; Triton reads this once, at first import.
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:
    pass


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (its CPU twin runs)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
