import os

import torch

# Without a GPU, the Triton kernels run on CPU tensors through the Triton interpreter. It must be set
# before triton is imported anywhere.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Tests never autotune (on a GPU every new shape would time all configs); the autotune tests opt in.
os.environ.setdefault("CSSFORMER_AUTOTUNE", "0")

import pytest  # noqa: E402


@pytest.fixture
def device() -> str:
    """Where the tests put their tensors: CUDA when there is one, else the CPU (interpreter)."""
    return "cuda" if torch.cuda.is_available() else "cpu"
