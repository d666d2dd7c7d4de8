import atexit
import os
import sys

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


# Ending the test process. About one full run in six on the 2-core CI machine ended, after pytest
# had reported every test passed, in a glibc abort while the interpreter tore down ("munmap_chunk():
# invalid pointer", exit 134): a native library (torch, onnx, onnxscript, onnxruntime and Triton are
# all loaded in this one process) frees memory it does not own at teardown. Not reproduced on its own
# (valgrind of the onnxruntime and onnx parts is clean). So that the exit code is pytest's verdict on
# the tests, the process ends with os._exit(pytest's status) once pytest has written everything,
# skipping that teardown. CSSFORMER_TEST_TEARDOWN=1 keeps the normal teardown, to study the crash.
_STATUS = {}


def pytest_sessionfinish(session, exitstatus):
    _STATUS["exit"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    if "exit" in _STATUS and not hasattr(config, "workerinput") and os.environ.get("CSSFORMER_TEST_TEARDOWN") != "1":
        atexit.register(_exit_now, _STATUS["exit"])  # registered last: runs before every other exit handler


def _exit_now(status: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
