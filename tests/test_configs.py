"""Shipped configs (one per row of the paper's tables): each parses, resolves, builds the nano variant
of its model at 64x64 and takes one training step with its own pipeline on synthetic images; the
`configs` command and `--config NAME` find them from any directory; impossible settings are one-line
errors with exit code 2."""
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from cssformer.cli import main
from cssformer.configs import config_path, list_configs, load_config
from cssformer.data import classes
from cssformer.data.loader import TrainSet
from cssformer.data.registry import build_dataset
from cssformer.data.transforms import train_transforms
from cssformer.engine.config import resolve
from cssformer.engine.optim import build_optimizer, build_scheduler
from cssformer.models import PRESETS, SegmentationLoss, build_model

NAMES = list_configs()
CLASSES = {"ade20k": classes.ADE20K, "cityscapes": classes.CITYSCAPES, "pascal_context_59": classes.PASCAL_CONTEXT_59,
           "pascal_context_60": classes.PASCAL_CONTEXT_60, "coco_stuff_10k": classes.COCO_STUFF}
TINY = 64


def test_every_paper_row_has_a_config():
    assert len(NAMES) >= 40
    want = {f"cssformer-swin-{s}_{d}" for s in "tsbl" for d in ("ade20k-512", "cityscapes-768", "pascal-context-59",
                                                                  "coco-stuff-10k")}
    want |= {"cssformer-swin-l_ade20k-640", "cssformer-swin-l_cityscapes-1024", "cssformer-swin-l_pascal-context-60"}
    want |= {f"table5-{r}_swin-t_pascal-context-59" for r in ("baseline", "cia", "msfe-csf")}
    want |= {f"table7-{d}-swin-{s}_pascal-context-59" for d in ("upernet", "fpn", "segformer", "msdeform-fpn")
             for s in "tsbl"}
    assert want <= set(NAMES), sorted(want - set(NAMES))


def _nano(model: str) -> str:
    decoder = PRESETS[model]["decoder"]
    return f"{decoder}-nano"


@pytest.mark.parametrize("name", NAMES)
def test_config_parses_builds_and_trains_one_step(name):
    values = load_config(name)
    cfg = resolve(values, {})
    assert cfg["batch_size"] == 16 and cfg["model"] in PRESETS
    sources, reference = cfg["sources"], cfg["reference"]
    assert {"crop_size", "batch_size", "iters", "lr"} <= set(sources)
    assert all(v.split()[0] in ("paper", "mmseg", "ours") for v in sources.values()), sources
    size = PRESETS[cfg["model"]]["size"]
    swin = {"swin-t": "tiny", "swin-s": "small", "swin-b": "base", "swin-l": "large"}[size]
    assert reference["pretrained_file"].startswith(f"swin_{swin}_")
    assert cfg["pretrained"].endswith(reference["pretrained_file"])
    # the pipeline of the config, scaled down to a 64x64 crop, on synthetic images
    scale = cfg["resize_scale"]
    factor = TINY / min(cfg["crop_size"])
    tiny_scale = None if scale is None else [max(1, int(s * factor)) for s in scale]
    transforms = train_transforms([TINY, TINY], tiny_scale, cfg["ratio_range"], cfg["cat_max_ratio"],
                                  photometric=cfg["photometric"])
    data = TrainSet(build_dataset("synthetic", "train", length=2, size=96), transforms, seed=0)
    images, masks = (torch.stack(t) for t in zip(*(data[i] for i in range(2))))
    assert images.shape == (2, 3, TINY, TINY)
    num_classes = len(CLASSES[cfg["dataset"]])
    torch.manual_seed(0)
    model = build_model(_nano(cfg["model"]), num_classes, img_size=TINY, **cfg["model_args"])
    model.train()
    optimizer = build_optimizer(model, cfg["lr"], cfg["weight_decay"], cfg["betas"])
    scheduler = build_scheduler(optimizer, cfg["iters"], cfg["warmup_iters"], cfg["warmup_ratio"], cfg["poly_power"],
                                cfg["min_lr"])
    loss, _ = SegmentationLoss(cfg["aux_weight"])(model(images), masks)
    loss.backward()
    optimizer.step()
    scheduler.step()
    assert torch.isfinite(loss)


def test_configs_command_lists_them_and_config_name_works_from_any_directory(tmp_path, capsys):
    assert main(["configs", "--names"]) == 0
    assert capsys.readouterr().out.split() == NAMES
    assert main(["configs", "--table", "5", "--names"]) == 0
    assert len(capsys.readouterr().out.split()) == 4
    # from another directory, in a fresh process: the name resolves to the installed file, and the run
    # stops (exit 2, one line) on the first thing this machine lacks, the pretrained Swin file
    ade = tmp_path / "ade"
    for split in ("training", "validation"):
        for folder, suffix in (("images", ".jpg"), ("annotations", ".png")):
            (ade / folder / split).mkdir(parents=True)
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(ade / folder / split / f"a{suffix}")
    proc = subprocess.run([sys.executable, "-m", "cssformer.cli", "train", "--config", "cssformer-swin-t_ade20k-512",
                           "--set", f"data_root={ade}", "--accum-steps", "16", "--work-dir", str(tmp_path / "w")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "weights/swin_tiny_patch4_window7_224.pth" in err[0], err
    assert "https://github.com/SwinTransformer/storage/releases/download/v1.0.0/swin_tiny_patch4_window7_224.pth" in err[0]
    assert not (tmp_path / "w").exists()
    assert config_path("cssformer-swin-t_ade20k-512").is_file()


@pytest.mark.parametrize("args, message", [
    (["--set", "crop_size=[96, 96]", "--set", "test.mode=slide", "--set", "test.crop=[64, 64]"],
     "larger than the sliding window"),
    (["--batch-size", "6", "--accum-steps", "4"], "not divisible by accum_steps 4"),
    (["--set", "colour=1"], "unknown key 'colour'"),
    (["--config", "no-such-config"], "neither a file nor a shipped config"),
    (["--pretrained", "nowhere/swin.pth", "--iters", "1"], "pretrained"),
])
def test_impossible_settings_are_one_line_errors(tmp_path, capsys, args, message):
    assert main(["train", *args, "--device", "cpu", "--num-workers", "0", "--work-dir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "w").exists()
