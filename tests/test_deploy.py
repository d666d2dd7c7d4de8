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
    assert main(["train", *TINY, "--iters", "3", "--eval-interval", "3", "--tensorboard", "--work-dir", str(work)]) == 0
    return work


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


def test_onnx_roll_takes_the_shift_modulo_the_size(tmp_path):
    # Swin rolls by 3 on a 2 x 2 last stage for inputs of 64 px; torch's own ONNX form of roll got it wrong
    import io
    import warnings

    import onnxruntime as ort

    from cssformer.deploy import _onnx_fixes

    class Roll(torch.nn.Module):
        def forward(self, x):
            return torch.roll(x, shifts=(-3, 3), dims=(1, 2)) + torch.roll(x, shifts=(1, -5), dims=(1, 2))

    x = torch.randn(2, 2, 3, 4)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), _onnx_fixes(17):
        warnings.simplefilter("ignore")
        torch.onnx.export(Roll(), (x,), buffer, dynamo=False, opset_version=17, input_names=["x"],
                          dynamic_axes={"x": {0: "n", 1: "h", 2: "w"}})  # sizes known only when it runs
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    for x in (x, torch.randn(1, 5, 2, 4)):
        torch.testing.assert_close(torch.from_numpy(session.run(None, {"x": x.numpy()})[0]), Roll()(x), rtol=0, atol=0)


def _check_onnx(model, path, size, batch):
    from cssformer.deploy import example_input, max_abs_diff, run_onnx

    images = example_input(size, batch=batch, seed=3)
    with torch.no_grad():
        expected = model(images)
    got = run_onnx(path, images)
    assert got.shape == expected.shape
    return max_abs_diff(got, expected)


def _check_docs_recipe(model, path):
    """docs/deploy.md's onnxruntime recipe, run as written on the 48x64 graph: a frame that fits is only
    padded and gets exactly predict_mask's mask; larger and odd frames get a mask of their own size."""
    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "deploy.md").read_text()
    code = next(block.split("\n", 1)[1] for block in text.split("```")[1::2]
                if block.startswith("python") and "def predict(image" in block)
    code = code.replace('"model.onnx"', repr(str(path))).split("\nmask = predict(")[0]
    namespace = {}
    exec(code, namespace)
    small = _image((40, 52))
    same = namespace["predict"](Image.fromarray(small)) == cssformer.predict_mask(model, small)
    assert same.mean() >= 0.999  # onnxruntime's float rounding may flip a near tie
    for size in ((90, 200), (47, 31), (64, 64)):
        frame = np.ascontiguousarray(np.tile(_image((40, 52), seed=1), (3, 4, 1))[: size[0], : size[1]])
        mask = namespace["predict"](Image.fromarray(frame))
        assert mask.shape == size and mask.max() < model.num_classes


def test_onnx_export_matches_pytorch_at_two_sizes(run_dir, tmp_path, capsys):
    import onnx

    model = cssformer.from_checkpoint(run_dir / "best.pth")
    path = tmp_path / "nano.onnx"
    # through the command: dynamic batch, the check's line
    assert main(["export", str(run_dir / "best.pth"), "--format", "onnx", "--output", str(path), "--size", "48", "64",
                 "--dynamic", "--check"]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("check:")][0]
    assert float(line.rsplit(" ", 1)[1]) <= 1e-4
    assert _check_onnx(model, path, (48, 64), batch=3) <= 1e-4
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["class_names"]) == list(SyntheticDataset.class_names)
    assert json.loads(meta["input_size"]) == [48, 64] and json.loads(meta["mean"]) == pytest.approx(model.mean)
    assert json.loads(meta["std"]) == pytest.approx(model.std) and len(json.loads(meta["palette"])) == 6
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "GridSample" in ops and not any("cssformer" in op for op in ops)
    graph = onnx.load(str(path)).graph  # named outputs with their sizes written out
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in (*graph.input, *graph.output)}
    assert dims == {"images": ["batch", 3, 48, 64], "logits": ["batch", 6, 48, 64]}
    _check_docs_recipe(model, path)
    # the library call, an odd size (padding, unequal CIA bins)
    from cssformer.deploy import export_onnx
    odd = tmp_path / "odd.onnx"
    export_onnx(model, odd, (37, 45))
    assert _check_onnx(model, odd, (37, 45), batch=1) <= 1e-4


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
def test_swin_t_onnx_matches_pytorch_at_two_sizes(tmp_path):
    from cssformer.deploy import export_onnx
    from cssformer.engine.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = cssformer.build_model("cssformer-swin-t", 150)  # built at 512: at 64 px Swin rolls by 3 on 2 x 2
    save_checkpoint({"model": model.state_dict(), "build_args": model.build_args}, tmp_path / "swin.pth")
    model = cssformer.from_checkpoint(tmp_path / "swin.pth")
    for size in ((64, 64), (96, 96)):
        path = tmp_path / f"swin_{size[0]}.onnx"
        export_onnx(model, path, size, dynamic=True)
        assert _check_onnx(model, path, size, batch=2) <= 1e-4


# --- bad input -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["format", "not_a_checkpoint", "not_safetensors", "output_is_a_folder",
                                  "output_under_a_file", "size", "opset", "size_for_safetensors", "check_size"])
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
                           "--check-size", "48", "64"]}[case]
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(["export", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cssformer export: error:") and "\n" not in err, err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written, no temp file left
