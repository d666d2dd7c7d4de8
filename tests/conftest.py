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


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    """On a native crash, print only the crashing thread's Python stack. pytest prints every thread's,
    newest first; with the writer threads of TensorBoard and tqdm alive, a CI log that keeps the head
    and tail of the output cut out the middle, which held the crashing thread."""
    import faulthandler

    try:
        from _pytest.faulthandler import fault_handler_stderr_fd_key
    except ImportError:  # another pytest: its own handler (all threads) stays
        return
    fd = config.stash.get(fault_handler_stderr_fd_key, None)
    if fd is not None and faulthandler.is_enabled():
        faulthandler.enable(file=fd, all_threads=False)
