"""Deployment: `cssformer export` (ONNX, torch.export, safetensors), the Python inference API, training
curves. Nano-sized: a 3-iteration training run is shared by the module."""
import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import cssformer
from cssformer.cli import main
from cssformer.data import SyntheticDataset

TINY = ["--crop-size", "32", "--batch-size", "2", "--num-workers", "0", "--device", "cpu",
        "--set", "dataset_args={length: 4, size: 40}", "--set", "log_interval=1", "--warmup-iters", "1"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """cssformer-nano trained 3 iterations on the synthetic set (crop 32), with TensorBoard events."""
    work = tmp_path_factory.mktemp("deploy") / "run"
    before = set(_tensorboard_threads())
    assert main(["train", *TINY, "--iters", "3", "--eval-interval", "3", "--tensorboard", "--work-dir", str(work)]) == 0
    _LEFT_RUNNING["tensorboard writers"] = set(_tensorboard_threads()) - before
    return work


_LEFT_RUNNING = {}


def _tensorboard_threads():
    import threading

    return [t for t in threading.enumerate() if type(t).__module__.startswith("tensorboard")]


@pytest.fixture(scope="module")
def safetensors_file(run_dir):
    path = run_dir / "best.safetensors"
    assert main(["export", str(run_dir / "best.pth"), "--format", "safetensors", "--output", str(path)]) == 0
    return path


def _image(size=(40, 52), seed=0) -> np.ndarray:
    return SyntheticDataset("val", length=1, size=64, seed=seed)[0]["image"][: size[0], : size[1]].copy()


# --- training curves ----------------------------------------------------------------------------------

def test_training_leaves_a_curves_png_and_plot_redraws_it(run_dir, tmp_path, capsys):
    png = run_dir / "curves.png"
    assert png.is_file() and Image.open(png).size[0] > 500
    out = tmp_path / "c.png"
    assert main(["plot", str(run_dir), "--out", str(out)]) == 0
    assert Image.open(out).format == "PNG"
    assert main(["plot", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_curves_without_matplotlib_print_one_line_and_training_goes_on(run_dir, monkeypatch, capsys):
    from rich.console import Console

    from cssformer.engine.curves import after_training

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    after_training(run_dir, Console())
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and 'pip install "cssformer[plot]"' in line and "cssformer plot" in line


def test_train_tensorboard_flag_writes_events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert {f"val_IoU/{name}" for name in SyntheticDataset.class_names} <= set(events.Tags()["scalars"])
    samples = [tag for tag in events.Tags()["images"] if tag.startswith("val_samples/")]
    assert len(samples) == 4  # sample panels of the evaluation (the val set has 4 images)
    first = events.Images(samples[0])[0]
    assert first.step == 3 and first.width == 4 * 160 + 3 * 4  # 40 px images in 160 px tiles
    assert not _LEFT_RUNNING["tensorboard writers"]  # the run closed its writer (no thread, no open file left)


def test_tensorboard_scalars_mirror_the_log(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from cssformer.engine.logger import JsonlLog

    log = JsonlLog(tmp_path / "log.jsonl", tensorboard=True)
    log.write(type="start", iter=0, config={})
    log.write(type="train", iter=1, loss=2.5, loss_ce=2.0, lr=1e-3)
    log.write(type="train", iter=2, loss=2.0, loss_ce=1.5, lr=2e-3)
    log.write(type="eval", iter=2, mIoU=40.0, mAcc=50.0, aAcc=80.0, IoU={"a": 40.0})
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 2.5), (2, 2.0)]
    assert [e.value for e in events.Scalars("val/mIoU")] == [40.0]
    assert {"train/lr", "train/loss_ce", "val/mAcc", "val/aAcc", "val_IoU/a"} <= set(events.Tags()["scalars"])
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 4  # the log stays as it was
    assert log.scalars is not None and _tensorboard_threads()
    before = len(_tensorboard_threads())
    log.close()
    assert log.scalars is None and len(_tensorboard_threads()) == before - 1
    log.write(type="train", iter=3, loss=1.0)  # the JSONL log still takes records
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 5


# --- safetensors and the Python API --------------------------------------------------------------------

def test_safetensors_round_trip_is_bit_exact_and_gives_the_same_logits(run_dir, safetensors_file):
    from safetensors.torch import load_file

    from cssformer.engine.checkpoint import load_checkpoint

    pth = load_checkpoint(run_dir / "best.pth")
    raw = load_file(safetensors_file)  # a plain safetensors file: any reader, no pickle
    assert raw.keys() == pth["model"].keys()
    assert all(torch.equal(raw[k], v) and raw[k].dtype == v.dtype for k, v in pth["model"].items())
    a, b = cssformer.from_checkpoint(run_dir / "best.pth"), cssformer.from_checkpoint(safetensors_file)
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    assert b.build_args == a.build_args and b.class_names == a.class_names and b.palette == a.palette
    assert b.crop_size == (32, 32) and b.test_options == a.test_options


def test_from_checkpoint_attaches_what_inference_needs(safetensors_file):
    model = cssformer.from_checkpoint(safetensors_file, device="cpu")
    assert not model.training
    assert model.class_names == list(SyntheticDataset.class_names)
    assert model.palette == [tuple(c) for c in SyntheticDataset.palette]
    assert model.mean == pytest.approx([123.675, 116.28, 103.53])
    assert model.std == pytest.approx([58.395, 57.12, 57.375])
    assert model.crop_size == (32, 32) and model.test_options.mode == "whole"


def test_predict_mask_takes_a_path_pil_array_or_tensor(run_dir, tmp_path):
    from cssformer.data.transforms import to_tensor

    model = cssformer.from_checkpoint(run_dir / "best.pth")
    image = _image()
    path = tmp_path / "scene.png"
    Image.fromarray(image).save(path)
    mask = cssformer.predict_mask(model, path)
    assert mask.shape == (40, 52) and mask.dtype == np.uint8 and mask.max() < model.num_classes
    for same in (str(path), Image.open(path), image, torch.from_numpy(image), to_tensor(image)):
        np.testing.assert_array_equal(cssformer.predict_mask(model, same), mask)
    np.testing.assert_array_equal(cssformer.predict_mask(model, to_tensor(image)[None]), mask[None])  # a batch of 1
    slide = cssformer.predict_mask(model, image, mode="slide", crop=(32, 32), stride=(16, 16))
    assert slide.shape == (40, 52)
    with pytest.raises(ValueError, match="expected"):
        cssformer.predict_mask(model, image[..., 0])


def test_predict_overlay_blends_the_palette_mask(run_dir):
    from cssformer.api import colorize, overlay

    model = cssformer.from_checkpoint(run_dir / "best.pth")
    image = _image()
    picture = cssformer.predict_overlay(model, image, alpha=0.4)
    expected = overlay(image, colorize(cssformer.predict_mask(model, image), model.palette), 0.4)
    np.testing.assert_array_equal(picture, expected)
    with pytest.raises(ValueError, match="picture"):
        cssformer.predict_overlay(model, torch.zeros(3, 8, 8))


def test_predict_and_eval_accept_safetensors(safetensors_file, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(_image()).save(folder / "a.png")
    assert main(["predict", str(folder), "-c", str(safetensors_file), "-o", str(tmp_path / "out"),
                 "--device", "cpu"]) == 0
    assert (tmp_path / "out" / "a_mask.png").is_file()
    out = tmp_path / "eval.json"
    assert main(["eval", str(safetensors_file), "--device", "cpu", "--num-workers", "0", "--out", str(out)]) == 0
    assert 0 <= json.loads(out.read_text())["mIoU"] <= 100


# --- ONNX ----------------------------------------------------------------------------------------------

def test_cia_export_pool_matches_adaptive_avg_pool_at_odd_sizes(monkeypatch):
    from cssformer.models.cia import adaptive_avg_pool2d

    x = torch.randn(2, 5, 13, 7, dtype=torch.float64)
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    for h, w in ((13, 7), (16, 16), (5, 11), (2, 3)):
        x = torch.randn(2, 5, h, w, dtype=torch.float64)
        for size in (1, 2, 3, 6):
            torch.testing.assert_close(adaptive_avg_pool2d(x, size), F.adaptive_avg_pool2d(x, size),
                                       rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(adaptive_avg_pool2d(x.float(), 6), F.adaptive_avg_pool2d(x.float(), 6),
                                   rtol=1e-6, atol=1e-6)


def test_onnx_form_of_the_sampling_op_equals_the_op(monkeypatch):
    from cssformer_kernels import level_tensors, ms_deform_attn, ms_deform_attn_fused

    torch.manual_seed(0)
    shapes, starts = level_tensors([(6, 5), (3, 3)])
    N, Q, M, D, L, P = 2, 7, 2, 4, 2, 3
    value = torch.randn(N, int(shapes.prod(1).sum()), M, D)
    ref, off, logits = torch.rand(N, Q, L, 2), torch.randn(N, Q, M, L, P, 2), torch.randn(N, Q, M, L, P)
    loc, w = torch.rand(N, Q, M, L, P, 2), torch.rand(N, Q, M, L, P)
    fused, plain = (ms_deform_attn_fused(value, shapes, starts, ref, off, logits),
                    ms_deform_attn(value, shapes, starts, loc, w))
    import cssformer_kernels.op
    monkeypatch.setattr(cssformer_kernels.op, "exporting_to_onnx", lambda: True)  # as while TorchScript traces
    torch.testing.assert_close(ms_deform_attn_fused(value, shapes, starts, ref, off, logits), fused)
    torch.testing.assert_close(ms_deform_attn(value, shapes, starts, loc, w), plain)


@pytest.mark.parametrize("size", [(9, 14), (4, 4), (3, 5), (2, 2), (1, 1), (16, 7)])
def test_traceable_window_attention_equals_timms(size, monkeypatch):
    # the form torch.export traces (padded size ceil(H / window) * window) against timm's own, at sizes
    # smaller than the window, not multiples of it and with the shift (3) larger than the map
    from timm.models.swin_transformer import SwinTransformerBlock

    from cssformer.models.backbone import _TraceableWindowAttention

    torch.manual_seed(sum(size))
    block = SwinTransformerBlock(16, (16, 16), num_heads=2, window_size=7, shift_size=3, always_partition=True,
                                 dynamic_mask=True).eval()
    assert any(block.shift_size)
    x = torch.randn(2, *size, 16)
    with torch.no_grad():
        expected = type(block)._attn(block, x)
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        got = _TraceableWindowAttention(block)(x)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name, args", [("cssformer-swin-t", {}), ("cssformer-nano", {}),
                                        ("cssformer-nano", {"img_size": 32}), ("upernet-swin-b", {})])
def test_trace_size_gives_every_swin_stage_several_padded_windows(name, args):
    # the size a free-size ONNX export traces at must not be a special case of the graph's shape decisions
    from timm.models.swin_transformer import SwinTransformerBlock

    from cssformer.deploy import trace_size

    model = cssformer.build_model(name, 5, **args)
    h, w = trace_size(model)
    assert h % 32 == 0 and w % 32 == 0 and h != w
    for stage in range(4):
        stride = 4 * 2 ** stage
        for block in model.backbone.body.get_submodule(f"layers_{stage}").modules():
            if isinstance(block, SwinTransformerBlock):
                for size, window in zip((h // stride, w // stride), block.window_size):
                    if window > 1:
                        assert size > window  # several windows
                        if (32 // stride) % window:  # padding happens at some multiple of 32: here too
                            assert size % window, (stage, size, window)


def _check_onnx(model, path, size, batch):
    from cssformer.deploy import example_input, max_abs_diff, run_onnx

    images = example_input(size, batch=batch, seed=3)
    with torch.no_grad():
        expected = model(images)
    got = run_onnx(path, images)
    assert got.shape == expected.shape
    return max_abs_diff(got, expected)


def _docs_recipe(path):
    """docs/deploy.md's onnxruntime recipe, as written, on the graph at ``path``: its ``predict``."""
    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "deploy.md").read_text()
    code = next(block.split("\n", 1)[1] for block in text.split("```")[1::2]
                if block.startswith("python") and "def predict(image" in block)
    code = code.replace('"model.onnx"', repr(str(path))).split("\nmask = predict(")[0]
    namespace = {}
    exec(code, namespace)
    return namespace["predict"]


def _frame(size, seed=1):
    return np.ascontiguousarray(np.tile(_image((40, 52), seed=seed), (3, 4, 1))[: size[0], : size[1]])


@pytest.fixture(scope="module")
def onnx_any_size(run_dir, tmp_path_factory):
    """The nano checkpoint as ONNX of any size with a free batch, through the command with --check."""
    import contextlib
    import io

    path = tmp_path_factory.mktemp("onnx") / "nano.onnx"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["export", str(run_dir / "best.pth"), "--format", "onnx", "--output", str(path), "--dynamic",
                     "--check"]) == 0
    return path, out.getvalue()


def test_onnx_of_any_size_matches_pytorch_at_other_sizes(run_dir, onnx_any_size):
    import onnx

    path, printed = onnx_any_size
    checks = [x for x in printed.splitlines() if x.startswith("check:")]
    assert len(checks) == 2 and all(float(x.rsplit(" ", 1)[1]) <= 1e-4 for x in checks)  # two sizes by default
    assert "at 32x32, logits (1," in checks[0] and "at 64x32, logits (2," in checks[1]  # crop; non-square, batch 2
    model = cssformer.from_checkpoint(run_dir / "best.pth")
    for size, batch in (((32, 32), 1), ((64, 96), 3), ((160, 64), 1), ((224, 256), 2)):  # one file, any size
        assert _check_onnx(model, path, size, batch) <= 1e-4, size
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["class_names"]) == list(SyntheticDataset.class_names)
    assert json.loads(meta["input_size"]) is None and json.loads(meta["size_multiple"]) == 32
    assert json.loads(meta["mean"]) == pytest.approx(model.mean) and json.loads(meta["std"]) == pytest.approx(model.std)
    assert len(json.loads(meta["palette"])) == 6
    ops = {n.op_type for n in proto.graph.node}
    assert "GridSample" in ops and not any("cssformer" in op for op in ops)
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in (*proto.graph.input, *proto.graph.output)}
    assert dims == {"images": ["batch", 3, "height", "width"], "logits": ["batch", 6, "height", "width"]}


def test_docs_recipe_on_the_any_size_graph_gives_predict_masks_mask(run_dir, onnx_any_size):
    model = cssformer.from_checkpoint(run_dir / "best.pth")
    predict = _docs_recipe(onnx_any_size[0])
    for size in ((40, 52), (90, 200), (47, 31), (64, 64)):  # padded to multiples of 32, never resized
        frame = _frame(size)
        mask = predict(Image.fromarray(frame))
        assert mask.shape == size
        assert (mask == cssformer.predict_mask(model, frame)).mean() >= 0.999  # onnxruntime may flip a near tie


def test_onnx_of_a_fixed_size_takes_that_size_and_the_recipe_fits_frames_to_it(run_dir, tmp_path):
    import onnx

    from cssformer.deploy import export_onnx

    model = cssformer.from_checkpoint(run_dir / "best.pth")
    path = tmp_path / "odd.onnx"
    export_onnx(model, path, (37, 45))  # an odd size: padding and unequal CIA bins inside the graph
    assert _check_onnx(model, path, (37, 45), batch=1) <= 1e-4
    proto = onnx.load(str(path))
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in (*proto.graph.input, *proto.graph.output)}
    assert dims == {"images": [1, 3, 37, 45], "logits": [1, 6, 37, 45]}
    assert json.loads({p.key: p.value for p in proto.metadata_props}["input_size"]) == [37, 45]
    predict = _docs_recipe(path)
    small = _image((33, 40))  # fits: only padded, and the model pads both to 64x64, so predict_mask's mask
    assert (predict(Image.fromarray(small)) == cssformer.predict_mask(model, small)).mean() >= 0.999
    for size in ((90, 200), (47, 31), (64, 64)):  # shrunk to fit, the mask back at the frame's size
        mask = predict(Image.fromarray(_frame(size)))
        assert mask.shape == size and mask.max() < model.num_classes


def test_pt2_program_keeps_the_custom_op_and_matches(run_dir, tmp_path):
    from cssformer.deploy import PT2_METADATA, example_input, max_abs_diff

    path = tmp_path / "nano.pt2"
    assert main(["export", str(run_dir / "best.pth"), "--format", "pt2", "--output", str(path)]) == 0
    extra = {PT2_METADATA: ""}
    program = torch.export.load(str(path), extra_files=extra)
    meta = json.loads(extra[PT2_METADATA])  # one JSON object: numbers and lists, not JSON strings inside
    assert meta["input_size"] == [32, 32] and meta["num_classes"] == 6 and isinstance(meta["build_args"], dict)
    assert meta["class_names"] == list(SyntheticDataset.class_names) and meta["mean"] == pytest.approx([123.675, 116.28, 103.53])
    ops = [n for n in program.graph.nodes if n.op == "call_function" and "cssformer" in str(n.target)]
    assert ops and all(n.target == torch.ops.cssformer.ms_deform_attn_fused.default for n in ops)
    assert all(n.args[-1] == "auto" for n in ops)  # the backend is picked by device when the program runs
    model = cssformer.from_checkpoint(run_dir / "best.pth")
    images = example_input((32, 32), seed=4)
    with torch.no_grad():
        assert max_abs_diff(program.module()(images), model(images)) <= 1e-5


@pytest.mark.slow
def test_swin_t_onnx_of_any_size_matches_pytorch(tmp_path):
    from cssformer.deploy import export_onnx
    from cssformer.engine.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = cssformer.build_model("cssformer-swin-t", 150)  # built at 512: window 7, shift 3 on every stage
    save_checkpoint({"model": model.state_dict(), "build_args": model.build_args}, tmp_path / "swin.pth")
    model = cssformer.from_checkpoint(tmp_path / "swin.pth")
    path = tmp_path / "swin.onnx"
    export_onnx(model, path, None, dynamic=True)
    # 32 and 64 px: the last stage (1 x 1, 2 x 2) is smaller than the shift; 224: one window exactly;
    # 448 x 96: several windows one way, one the other
    for size, batch in (((32, 32), 1), ((64, 64), 2), ((224, 224), 1), ((448, 96), 1), ((288, 352), 2)):
        assert _check_onnx(model, path, size, batch) <= 1e-4, size


# --- bad input -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["format", "not_a_checkpoint", "not_safetensors", "output_is_a_folder",
                                  "output_under_a_file", "size", "opset", "size_for_safetensors", "check_size",
                                  "check_size_fixed"])
def test_bad_input_is_one_line_and_exit_2_and_writes_nothing(case, run_dir, tmp_path, capsys):
    ckpt, out = str(run_dir / "best.pth"), tmp_path / "out" / "model.onnx"
    args = {"format": [ckpt, "--format", "tflite", "--output", str(out)],
            "not_a_checkpoint": [str(tmp_path / "junk.pth"), "--format", "onnx", "--output", str(out)],
            "not_safetensors": [str(tmp_path / "junk.safetensors"), "--format", "pt2", "--output",
                                str(out.with_suffix(".pt2"))],
            "output_is_a_folder": [ckpt, "--format", "onnx", "--output", str(tmp_path)],
            "output_under_a_file": [ckpt, "--format", "safetensors", "--output", str(tmp_path / "junk.pth" / "x")],
            "size": [ckpt, "--format", "onnx", "--output", str(out), "--size", "0", "32"],
            "opset": [ckpt, "--format", "onnx", "--output", str(out), "--opset", "13", "--size", "32", "32"],
            "size_for_safetensors": [ckpt, "--format", "safetensors", "--output", str(out), "--size", "32", "32"],
            "check_size": [ckpt, "--format", "onnx", "--output", str(out), "--check", "--check-size", "32", "32",
                           "--check-size", "48", "64"],  # 48: not a multiple of 32
            "check_size_fixed": [ckpt, "--format", "onnx", "--output", str(out), "--size", "32", "32", "--check",
                                 "--check-size", "64", "64"]}[case]
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(["export", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cssformer export: error:") and "\n" not in err, err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written, no temp file left
