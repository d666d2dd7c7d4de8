"""The sampling backend: one library-level switch (set_backend / use_backend / CSSFORMER_MSDA_BACKEND),
a per-layer override, a per-call override, and nothing of it stored with a model."""
import os
import subprocess
import sys
import warnings

import pytest
import torch

import cssformer_kernels as K
import cssformer_kernels.op as op
from cssformer.engine.checkpoint import save_checkpoint
from cssformer.engine.model_io import load_trained
from cssformer.models import build_model
from cssformer_kernels.shapes import ProblemShape, make_inputs

SHAPE = ProblemShape(N=1, levels=((3, 4), (1, 2)), M=2, D=4, P=2, Q=3)


@pytest.fixture
def ran(monkeypatch):
    """The backend each custom-op call resolved to, in call order (the op itself is not run)."""
    calls = []

    def fake_op(value, spatial_shapes, level_start_index, a, b, c, backend):
        calls.append(backend)
        return value.new_zeros(value.shape[0], b.shape[1], value.shape[2] * value.shape[3])

    monkeypatch.setattr(op, "_fused_op", fake_op)
    yield calls
    K.set_backend(None)


def _call(**kwargs):
    K.ms_deform_attn_fused(*make_inputs(SHAPE, fused=True), **kwargs)


def test_library_switch_context_and_per_call_override(ran):
    _call()
    K.set_backend("triton")
    _call()
    with K.use_backend("reference"):
        assert K.get_backend() == "reference"
        _call()
        _call(backend="triton")  # the call's own choice wins over the library's
    assert K.get_backend() == "triton"
    K.set_backend(None)  # back to the environment variable / "auto"
    _call()
    assert ran == ["reference", "triton", "reference", "triton", "reference"]  # "auto" on CPU -> reference


def test_layer_override_wins_over_the_library_switch(ran):
    layer = K.MSDeformAttn(d_model=8, n_levels=2, n_heads=2, n_points=2)
    args = (torch.randn(1, 3, 8), torch.rand(1, 3, 2), torch.randn(1, 14, 8), [(3, 4), (1, 2)])
    with K.use_backend("triton"):
        layer(*args)
        layer.backend = "reference"
        layer(*args)
    assert ran == ["triton", "reference"]
    assert "backend" not in "".join(layer.state_dict())
    model = torch.nn.Sequential(layer, K.MSDeformAttn(d_model=8, n_levels=2, n_heads=2, n_points=2))
    assert K.override_backend(model, None) == 2 and layer.backend is None


def test_bad_backend_names_are_clear_errors():
    with pytest.raises(ValueError, match=r"backend: got 'cuda', expected one of \('auto', 'triton', 'reference'\)"):
        K.set_backend("cuda")
    with pytest.raises(ValueError, match="backend: got 'gpu'"):
        K.MSDeformAttn(d_model=8, n_levels=1, n_heads=2, n_points=1, backend="gpu")
    assert K.get_backend() == "auto"


def test_environment_variable_sets_the_library_default():
    script = "import cssformer_kernels as K; print(K.get_backend())"
    env = dict(os.environ, CSSFORMER_MSDA_BACKEND="reference")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "reference"
    env["CSSFORMER_MSDA_BACKEND"] = "fast"
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "CSSFORMER_MSDA_BACKEND: got 'fast'" in out.stderr


def test_build_model_backend_is_deprecated_and_not_saved():
    with pytest.warns(DeprecationWarning, match="set_backend"):
        model = build_model("cssformer-nano", num_classes=3, backend="reference")
    assert "backend" not in model.build_args
    assert {m.backend for m in model.modules() if isinstance(m, K.MSDeformAttn)} == {"reference"}
    assert "backend" not in build_model("cssformer-nano", num_classes=3).build_args


def test_old_checkpoint_with_a_backend_loads_without_it(tmp_path):
    model = build_model("msdeform-fpn-nano", num_classes=3)
    path = tmp_path / "old.pth"
    save_checkpoint({"model": model.state_dict(),
                     "build_args": dict(model.build_args, backend="reference")}, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even a deprecation warning: the key is dropped on load
        loaded, state = load_trained(path, torch.device("cpu"))
    assert state["build_args"]["backend"] == "reference" and "backend" not in loaded.build_args
    assert {m.backend for m in loaded.modules() if isinstance(m, K.MSDeformAttn)} == {None}
