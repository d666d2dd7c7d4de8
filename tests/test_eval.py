"""Inference modes (whole, sliding window, multi-scale + flip) and the `cssformer eval` command."""
import json

import pytest
import torch
import torch.nn.functional as F

from cssformer.cli import main
from cssformer.engine.inference import TestOptions, predict_probs, slide_logits
from cssformer.metrics import IoUMetric


class PixelModel(torch.nn.Module):
    """A per-pixel model (1x1 conv): its output at a pixel depends on that pixel only."""

    def __init__(self, k=4):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, k, 1)

    def forward(self, x):
        return self.conv(x)


class CountingModel(torch.nn.Module):
    """Outputs, per window, the window's own mean and remembers the windows it saw."""

    def __init__(self):
        super().__init__()
        self.windows = []

    def forward(self, x):
        self.windows.append(tuple(x.shape[-2:]))
        return x.mean((1, 2, 3), keepdim=True).expand(x.shape[0], 2, *x.shape[-2:]).clone()


def test_slide_equals_whole_for_a_per_pixel_model():
    model, image = PixelModel(), torch.randn(1, 3, 50, 70)
    torch.testing.assert_close(slide_logits(model, image, (32, 32), (20, 20)), model(image))
    small = torch.randn(1, 3, 20, 25)  # smaller than the window: one window, the whole image
    torch.testing.assert_close(slide_logits(model, small, (32, 32), (20, 20)), model(small))


def test_slide_windows_follow_mmseg_grid_and_average_overlaps():
    model, image = CountingModel(), torch.randn(1, 3, 50, 70)
    out = slide_logits(model, image, (32, 32), (20, 20))
    # grids: h: (50 - 32 + 19) // 20 + 1 = 2, w: (70 - 32 + 19) // 20 + 1 = 3
    assert model.windows == [(32, 32)] * 6
    # pixel (0, 0) is covered by the first window only; pixel (40, 45) by windows (1, 1) and (1, 2)
    torch.testing.assert_close(out[0, 0, 0, 0], image[:, :, :32, :32].mean())
    want = (image[:, :, 18:50, 20:52].mean() + image[:, :, 18:50, 38:70].mean()) / 2
    torch.testing.assert_close(out[0, 0, 40, 45], want)


def test_flip_and_scales_average_softmax_probabilities():
    model, image = PixelModel(), torch.randn(1, 3, 24, 32)
    single = model(image).softmax(1)
    torch.testing.assert_close(predict_probs(model, image, (24, 32), TestOptions(flip=True)), single)  # flip-equivariant

    class LeftRight(torch.nn.Module):  # not flip-equivariant: logits grow to the right
        def forward(self, x):
            ramp = torch.linspace(0, 1, x.shape[-1]).expand(x.shape[0], 1, x.shape[-2], x.shape[-1])
            return torch.cat([ramp, 1 - ramp], 1)

    lr = LeftRight()
    probs = predict_probs(lr, image, (24, 32), TestOptions(flip=True))
    want = (lr(image).softmax(1) + lr(image).softmax(1).flip(-1)) / 2
    torch.testing.assert_close(probs, want)
    ms = predict_probs(model, image, (24, 32), TestOptions(ratios=(0.5, 1.0)))
    half = F.interpolate(model(F.interpolate(image, size=(12, 16), mode="bilinear", align_corners=False)),
                         size=(24, 32), mode="bilinear", align_corners=False).softmax(1)
    torch.testing.assert_close(ms, (half + single) / 2)


# --- the command ---

DATA = {"length": 4, "size": 40}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained cssformer-nano saved as cssformer-train saves it (no training needed to test eval)."""
    from cssformer.data import SyntheticDataset
    from cssformer.engine.checkpoint import save_checkpoint
    from cssformer.engine.config import resolve
    from cssformer.models import build_model

    torch.manual_seed(0)
    model = build_model("cssformer-nano", 6, img_size=32)
    cfg = resolve({}, {"crop_size": 32, "dataset_args": DATA})
    path = tmp_path_factory.mktemp("eval") / "model.pth"
    ds = SyntheticDataset("val", **DATA)
    save_checkpoint({"model": model.state_dict(), "build_args": model.build_args, "config": cfg, "iteration": 0,
                     "meta": {"dataset": "synthetic", "class_names": ds.class_names, "palette": ds.palette}}, path)
    return path, model.eval()


def test_eval_command_matches_a_direct_computation(checkpoint, tmp_path):
    from cssformer.data import SyntheticDataset
    from cssformer.data.transforms import to_tensor

    path, model = checkpoint
    out = tmp_path / "result.json"
    assert main(["eval", str(path), "--out", str(out), "--device", "cpu", "--num-workers", "0"]) == 0
    result = json.loads(out.read_text())
    metric = IoUMetric(6)
    samples = list(SyntheticDataset("val", **DATA))
    with torch.no_grad():  # evaluation batches same-size images (up to 8): do the same
        logits = model(torch.stack([to_tensor(s["image"]) for s in samples]))
    metric.update(logits.argmax(1), torch.stack([torch.from_numpy(s["mask"]) for s in samples]))
    want = metric.compute()
    assert result["mIoU"] == pytest.approx(want["mIoU"]) and result["aAcc"] == pytest.approx(want["aAcc"])
    assert result["images"] == 4 and list(result["IoU"]) == SyntheticDataset.class_names


def test_eval_slide_and_aug_test_run(checkpoint, tmp_path):
    out = tmp_path / "slide.json"
    rc = main(["eval", str(checkpoint[0]), "--mode", "slide", "--crop", "32", "32", "--stride", "16", "16",
               "--flip", "--out", str(out), "--device", "cpu", "--num-workers", "0"])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["options"]["mode"] == "slide" and result["options"]["flip"] is True
    assert 0.0 <= result["aAcc"] <= 100.0


def test_eval_bad_checkpoints(checkpoint, tmp_path, capsys):
    assert main(["eval", str(tmp_path / "missing.pth")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint")
    assert main(["eval", str(junk)]) == 2
    assert f"{junk} is not a trusted cssformer checkpoint" in capsys.readouterr().err
    bare = tmp_path / "bare.pth"
    torch.save({"weight": torch.zeros(2)}, bare)
    assert main(["eval", str(bare)]) == 2
    assert "is not a cssformer checkpoint" in capsys.readouterr().err
    state = torch.load(checkpoint[0], weights_only=True)
    state["model"]["decoder.extra"] = torch.zeros(1)
    odd = tmp_path / "odd.pth"
    torch.save(state, odd)
    assert main(["eval", str(odd), "--device", "cpu"]) == 2
    assert "does not fit this model: 1 unexpected keys (e.g. decoder.extra)" in capsys.readouterr().err
