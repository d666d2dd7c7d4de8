"""End to end on a plain folder dataset built here: train, evaluate (images of several sizes), and a
bad mask met during training (in a loader worker) reported by file name with exit code 2."""
import json

import numpy as np
from PIL import Image

from cssformer.cli import main


def _folder(root, bad_label=None):
    rng = np.random.default_rng(0)
    for split, sizes in (("train", [(48, 64), (48, 64), (40, 40), (56, 48)]), ("val", [(48, 64), (40, 40), (44, 52)])):
        for i, (h, w) in enumerate(sizes):
            mask = np.zeros((h, w), np.uint8)
            mask[h // 3:, : w // 2] = 1
            mask[: h // 4, w // 2:] = 2
            mask[0, 0] = 255
            image = (rng.random((h, w, 3)) * 60 + mask[..., None] * 60).astype(np.uint8)
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "masks" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / "images" / split / f"f{i}.png")
            if bad_label is not None and split == "train" and i == 2:
                mask[5, 5] = bad_label
            Image.fromarray(mask).save(root / "masks" / split / f"f{i}.png")
    (root / "classes.txt").write_text("ground\nwall\nsky\n")
    return root


ARGS = ["--dataset", "folder", "--crop-size", "32", "--batch-size", "2", "--iters", "2", "--eval-interval", "2",
        "--device", "cpu", "--set", "log_interval=1"]


def test_folder_dataset_trains_and_evaluates(tmp_path):
    root = _folder(tmp_path / "data")
    work = tmp_path / "work"
    assert main(["train", *ARGS, "--data-root", str(root), "--num-workers", "0", "--work-dir", str(work)]) == 0
    evals = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines() if '"eval"' in line]
    assert list(evals[-1]["IoU"]) == ["ground", "wall", "sky"]
    out = tmp_path / "eval.json"
    assert main(["eval", str(work / "best.pth"), "--out", str(out), "--device", "cpu", "--num-workers", "0"]) == 0
    result = json.loads(out.read_text())
    assert result["images"] == 3 and result["dataset"] == "folder"


def test_bad_mask_met_in_a_worker_names_the_file(tmp_path, capsys):
    root = _folder(tmp_path / "data", bad_label=9)
    work = tmp_path / "work"
    rc = main(["train", *ARGS, "--data-root", str(root), "--num-workers", "1", "--work-dir", str(work)])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"mask {root / 'masks' / 'train' / 'f2.png'} holds labels [9] outside the 3 classes" in err
    assert "Traceback" not in err
