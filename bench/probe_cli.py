"""Probe of the command line as a careless user and an adversary would use it (docs/reliability.md).

    python bench/probe_cli.py [--kills 12] [--only SUBSTRING ...] [--issue18] [--markdown]

Builds a scratch folder (a tiny trained checkpoint, images, folder datasets, hostile and broken files),
runs every case as its own ``python -m cssformer.cli`` process and checks: the exit code, that a
refusal is one line on stderr without a traceback, and that no file that existed before the case was
changed or deleted. Then kills training, evaluation and prediction at random points (SIGKILL,
SIGTERM and SIGINT) and checks that every checkpoint left is whole, that outputs are complete or absent,
and that the run resumes. Prints a table (``--markdown``: the table of docs/reliability.md); exit code 1 when a
case did not go as expected. Takes about 10 minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import random
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
TINY = ["--crop-size", "32", "--batch-size", "2", "--num-workers", "0", "--device", "cpu", "--warmup-iters", "1",
        "--set", "dataset_args={length: 4, size: 40}"]


class Hostile:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def cli(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cssformer.cli", *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def png(path: Path, h: int = 40, w: int = 40, mode: str = "RGB", value: int = 0) -> Path:
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    Image.fromarray(np.full(shape, value, np.uint8)).save(path)
    return path


def png_header(path: Path, w: int, h: int) -> Path:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", b"") + chunk(b"IEND", b""))
    return path


def folder_dataset(root: Path, val_mask=None) -> Path:
    for split in ("train", "val"):
        for i in range(2):
            png(root / "images" / split / f"f{i}.png")
            png(root / "masks" / split / f"f{i}.png", mode="L", value=1)
    (root / "classes.txt").write_text("a\nb\n")
    if val_mask is not None:
        val_mask(root / "masks" / "val" / "f1.png")
    return root


def fixtures(s: Path) -> None:
    """Everything the cases use, in the scratch folder ``s``."""
    import torch

    r = cli(["train", *TINY, "--iters", "2", "--eval-interval", "2", "--work-dir", "run"], s)
    assert r.returncode == 0, r.stderr
    (s / "ck.pth").write_bytes((s / "run" / "best.pth").read_bytes())
    (s / "empty.pth").write_bytes(b"")
    (s / "random.pth").write_bytes(random.Random(0).randbytes(4096))
    (s / "truncated.pth").write_bytes((s / "ck.pth").read_bytes()[:5000])
    (s / "hostile.pth").write_bytes(pickle.dumps(Hostile(), protocol=2))
    torch.save({"weights": Hostile()}, s / "hostile_zip.pth")
    torch.save({"weight": torch.zeros(2)}, s / "bare.pth")
    (s / "tag.yaml").write_text("lr: !!python/object/apply:os.system ['touch PWNED']\n")
    (s / "list.yaml").write_text("- lr\n- 1\n")
    (s / "binary.yaml").write_bytes(bytes(range(256)))
    (s / "bad.yaml").write_text("lr: [1\n")
    (s / "results.json").write_text('{"mIoU": 99}\n')
    (s / "a_file").write_text("in the way\n")
    (s / "dir.json").mkdir()
    png(s / "img" / "x.png")
    png(s / "img2" / "x.png")
    png(s / "img" / "y.jpg")
    png_header(s / "huge" / "bomb.png", 15000, 15000)
    (s / "preds").mkdir()
    (s / "preds" / "x_mask.png").write_bytes(b"an earlier prediction")
    (s / "user").mkdir()
    (s / "user" / "config.yaml").write_text("# my commented config\nlr: 1.0e-4\n")
    (s / "user" / "iter_000100.pth").write_bytes(b"another run's checkpoint")
    (s / "user" / "notes.tmp").write_text("keep me")
    folder_dataset(s / "data_ok")
    big = s / "data_big"
    for i in range(8):
        png(big / "images" / f"v{i}.png", 192, 256, value=25 * i)
        png(big / "masks" / f"v{i}.png", 192, 256, mode="L", value=i % 6)
    (big / "classes.txt").write_text("\n".join(f"c{i}" for i in range(6)) + "\n")
    folder_dataset(s / "data_trunc", lambda p: p.write_bytes(p.read_bytes()[:-30]))
    folder_dataset(s / "data_size", lambda p: png(p, 30, 30, mode="L", value=1))
    folder_dataset(s / "data_label", lambda p: png(p, mode="L", value=7))
    folder_dataset(s / "data_rgbmask", lambda p: png(p))
    fixtures_18(s)


def fixtures_18(s: Path) -> None:
    """The files of the issue-18 cases."""
    import copy

    import numpy as np
    import torch
    from PIL import Image

    from cssformer.engine.checkpoint import save_checkpoint

    state = torch.load(s / "ck.pth", weights_only=True)
    key = next(k for k, v in state["model"].items() if v.is_floating_point())
    nan = copy.deepcopy(state)
    nan["model"][key].fill_(float("nan"))
    save_checkpoint(nan, s / "nan.pth")
    for name, change in (("meta_list_args.pth", lambda x: x.update(build_args=["cssformer-nano", 6])),
                         ("meta_palette300.pth", lambda x: x["meta"].update(palette=[[300, 0, 0]] * 6)),
                         ("meta_palette2.pth", lambda x: x["meta"].update(palette=[[0, 0]] * 6)),
                         ("meta_iter_abc.pth", lambda x: x.update(iteration="abc")),
                         ("meta_pretrained.pth", lambda x: x["build_args"].update(pretrained="absent/trap.pth"))):
        crafted = copy.deepcopy(state)
        change(crafted)
        save_checkpoint(crafted, s / name)
    (s / "old.safetensors").write_bytes(b"an earlier export")
    (s / "dup.yaml").write_text("lr: 1.0e-4\nlr: 2.0e-4\n")
    (s / "alias.yaml").write_text("sources: [&a [x, x, x, x, x, x, x, x, x], &b [*a, *a, *a, *a, *a, *a, *a, *a, *a], "
                                  "&c [*b, *b, *b, *b, *b, *b, *b, *b, *b], [*c, *c, *c, *c, *c, *c, *c, *c, *c]]\n")
    (s / "deep.yaml").write_text("sources: " + "[" * 3000 + "]" * 3000 + "\n")
    (s / "null_iters.yaml").write_text("iters: null\n")
    for folder in ("a", "b"):
        (s / "sweep_cfg" / folder).mkdir(parents=True, exist_ok=True)
        (s / "sweep_cfg" / folder / "x.yaml").write_text("iters: 2\n")
    (s / "notes.md").write_text("my notes\n")
    (s / "badlog").mkdir()
    (s / "badlog" / "log.jsonl").write_text('{"type": "train", "iter": "abc", "loss": 1}\n')
    folder_dataset(s / "data_dupnames")
    (s / "data_dupnames" / "classes.txt").write_text("a\na\n")
    folder_dataset(s / "data_twoext")
    png(s / "data_twoext" / "images" / "train" / "f0.jpg")
    folder_dataset(s / "data_latin1")
    (s / "data_latin1" / "classes.txt").write_bytes("caf\xe9\nb\n".encode("latin-1"))
    folder_dataset(s / "data_dangling")
    os.symlink(s / "gone.png", s / "data_dangling" / "images" / "train" / "f9.png")
    six = s / "data_badimg"
    for split in ("train", "val"):
        for i in range(2):
            png(six / "images" / split / f"f{i}.png")
            png(six / "masks" / split / f"f{i}.png", mode="L", value=1)
    (six / "classes.txt").write_text("".join(f"c{i}\n" for i in range(6)))
    bad = six / "images" / "val" / "f1.png"
    bad.write_bytes(bad.read_bytes()[:60])
    (s / "img16").mkdir()
    Image.fromarray(np.full((40, 40), 40000, np.uint16)).save(s / "img16" / "g.png")
    (s / "imgf").mkdir()
    Image.fromarray(np.full((40, 40), 300.0, np.float32)).save(s / "imgf" / "f.tif")
    from cssformer.models import build_model

    weights = build_model("cssformer-nano", 2, img_size=32).backbone.body.state_dict()
    table = next(k for k in weights if k.endswith("relative_position_bias_table"))
    weights[table] = weights[table].flatten()
    torch.save(weights, s / "flat_table.pth")


# (name, argv, expected: "refuse" = exit 2 + one line; "ok" = exit 0), a check of the result or None
T = [*TINY, "--iters", "2"]  # a case that should be refused but is not ends quickly
F = [*TINY[:-2], "--iters", "2"]  # the same for a folder dataset (no synthetic dataset_args)
CASES = [
    # --- train: flags
    ("abbreviated flag", ["train", "--iter", "5"], "refuse"),
    ("--lr nan", ["train", "--lr", "nan"], "refuse"),
    ("--lr not a number", ["train", "--lr", "abc"], "refuse"),
    ("--grad-clip nan", ["train", "--grad-clip", "nan"], "refuse"),
    ("--grad-clip -1", ["train", *T, "--grad-clip", "-1", "--work-dir", "w"], "refuse"),
    ("--seed -1", ["train", *T, "--seed", "-1", "--work-dir", "w"], "refuse"),
    ("--num-workers -1", ["train", *T, "--num-workers", "-1", "--work-dir", "w"], "refuse"),
    ("--warmup-iters -5", ["train", *T, "--warmup-iters", "-5", "--work-dir", "w"], "refuse"),
    ("--weight-decay -0.1", ["train", *T, "--weight-decay", "-0.1", "--work-dir", "w"], "refuse"),
    ("--iters 0", ["train", *T, "--iters", "0", "--work-dir", "w"], "refuse"),
    ("--crop-size 100000", ["train", *T, "--crop-size", "100000", "--work-dir", "w"], "refuse"),
    ("--crop-size 16", ["train", *T, "--crop-size", "16", "--work-dir", "w"], "refuse"),
    ("--amp fp8", ["train", *T, "--amp", "fp8", "--work-dir", "w"], "refuse"),
    ("ratio_range [0, 0]", ["train", *T, "--set", "ratio_range=[0, 0]", "--work-dir", "w"], "refuse"),
    ("betas [2, 3]", ["train", *T, "--set", "betas=[2, 3]", "--work-dir", "w"], "refuse"),
    ("test.stride [0, 0]", ["train", *T, "--set", "test.stride=[0, 0]", "--work-dir", "w"], "refuse"),
    ("test.ratios []", ["train", *T, "--set", "test.ratios=[]", "--work-dir", "w"], "refuse"),
    ("--set bad YAML", ["train", "--set", "lr=[1"], "refuse"),
    ("--set unknown key", ["train", "--set", "lrr=1"], "refuse"),
    ("--set without =", ["train", "--set", "lr"], "refuse"),
    ("--dataset unknown", ["train", "--dataset", "imagenet"], "refuse"),
    ("--pretrained missing", ["train", *T, "--pretrained", "nope.pth", "--work-dir", "w"], "refuse"),
    ("--work-dir ''", ["train", "--work-dir", ""], "refuse"),
    # --- train: config files
    ("--config missing", ["train", "--config", "nope.yaml"], "refuse"),
    ("--config ''", ["train", "--config", ""], "refuse"),
    ("--config a folder", ["train", "--config", "img"], "refuse"),
    ("--config binary", ["train", "--config", "binary.yaml"], "refuse"),
    ("--config YAML python tag", ["train", "--config", "tag.yaml"], "refuse"),
    ("--config a list", ["train", "--config", "list.yaml"], "refuse"),
    ("--config bad YAML", ["train", "--config", "bad.yaml"], "refuse"),
    # --- train: work dirs
    ("work dir with user files", ["train", *T, "--work-dir", "user"], "refuse"),
    ("work dir is a file", ["train", *T, "--work-dir", "a_file"], "refuse"),
    ("work dir already a run", ["train", *T, "--work-dir", "run"], "refuse"),
    ("work dir in use (locked)", ["train", *T, "--work-dir", "locked"], "refuse"),
    ("--resume, no checkpoint", ["train", *T, "--work-dir", "w", "--resume"], "refuse"),
    ("--resume hostile pickle", ["train", *T, "--work-dir", "w", "--resume", "hostile.pth"], "refuse"),
    ("--resume finished run", ["train", *T, "--iters", "2", "--work-dir", "run", "--resume"], "refuse"),
    ("work dir on unwritable path", ["train", *T, "--work-dir", "/proc/cssformer-probe"], "refuse"),
    # --- train: data
    ("--data-root missing", ["train", *F, "--dataset", "folder", "--data-root", "nope"], "refuse"),
    ("truncated val mask", ["train", *F, "--dataset", "folder", "--data-root", "data_trunc",
                            "--work-dir", "w"], "refuse"),
    ("val image and mask sizes differ", ["train", *F, "--dataset", "folder", "--data-root", "data_size",
                                         "--work-dir", "w"], "refuse"),
    ("val mask label out of range", ["train", *F, "--dataset", "folder", "--data-root", "data_label",
                                     "--work-dir", "w"], "refuse"),
    ("val mask is RGB", ["train", *F, "--dataset", "folder", "--data-root", "data_rgbmask",
                         "--work-dir", "w"], "refuse"),
    # --- eval
    ("eval missing checkpoint", ["eval", "nope.pth"], "refuse"),
    ("eval '' checkpoint", ["eval", ""], "refuse"),
    ("eval a folder", ["eval", "img"], "refuse"),
    ("eval 0-byte .pth", ["eval", "empty.pth"], "refuse"),
    ("eval random bytes", ["eval", "random.pth"], "refuse"),
    ("eval truncated checkpoint", ["eval", "truncated.pth"], "refuse"),
    ("eval hostile pickle", ["eval", "hostile.pth"], "refuse"),
    ("eval hostile torch.save", ["eval", "hostile_zip.pth"], "refuse"),
    ("eval not a cssformer checkpoint", ["eval", "bare.pth"], "refuse"),
    ("eval --out the checkpoint", ["eval", "ck.pth", "--out", "ck.pth"], "refuse"),
    ("eval --out the checkpoint --force", ["eval", "ck.pth", "--out", "ck.pth", "--force"], "refuse"),
    ("eval --out existing file", ["eval", "ck.pth", "--out", "results.json"], "refuse"),
    ("eval --out a folder", ["eval", "ck.pth", "--out", "dir.json"], "refuse"),
    ("eval --out under a file", ["eval", "ck.pth", "--out", "a_file/r.json"], "refuse"),
    ("eval --out unwritable", ["eval", "ck.pth", "--device", "cpu", "--num-workers", "0",
                               "--out", "/proc/cssformer-probe.json"], "refuse"),
    ("eval --ratios 0", ["eval", "ck.pth", "--ratios", "0"], "refuse"),
    ("eval --ratios -1", ["eval", "ck.pth", "--ratios", "-1"], "refuse"),
    ("eval --stride 0 0", ["eval", "ck.pth", "--mode", "slide", "--stride", "0", "0"], "refuse"),
    ("eval --crop 0 0", ["eval", "ck.pth", "--mode", "slide", "--crop", "0", "0"], "refuse"),
    ("eval --num-workers -1", ["eval", "ck.pth", "--num-workers", "-1"], "refuse"),
    ("eval --mode bogus", ["eval", "ck.pth", "--mode", "bogus"], "refuse"),
    ("eval wrong dataset classes", ["eval", "ck.pth", "--dataset", "folder", "--data-root", "data_ok",
                                    "--device", "cpu"], "refuse"),
    ("eval --out new file", ["eval", "ck.pth", "--device", "cpu", "--num-workers", "0", "--out", "new.json"], "ok"),
    ("eval --out existing --force", ["eval", "ck.pth", "--device", "cpu", "--num-workers", "0",
                                     "--out", "results.json", "--force"], "ok"),
    # --- predict
    ("predict same stem twice", ["predict", "img/x.png", "img2/x.png", "-c", "ck.pth", "-o", "p1"], "refuse"),
    ("predict same stem, two extensions", ["predict", "img", "img2/x.png", "-c", "ck.pth", "-o", "p1"], "refuse"),
    ("predict -o = input folder", ["predict", "img", "-c", "ck.pth", "-o", "img"], "refuse"),
    ("predict -o inside input folder", ["predict", "img", "-c", "ck.pth", "-o", "img/out"], "refuse"),
    ("predict existing outputs", ["predict", "img/x.png", "-c", "ck.pth", "-o", "preds"], "refuse"),
    ("predict -o is a file", ["predict", "img/x.png", "-c", "ck.pth", "-o", "a_file"], "refuse"),
    ("predict missing input", ["predict", "nope.png", "-c", "ck.pth"], "refuse"),
    ("predict '' input", ["predict", "", "-c", "ck.pth"], "refuse"),
    ("predict hostile checkpoint", ["predict", "img/x.png", "-c", "hostile.pth", "-o", "p2"], "refuse"),
    ("predict 15000x15000 image", ["predict", "huge/bomb.png", "-c", "ck.pth", "-o", "p3", "--device", "cpu"],
     "refuse"),
    ("predict --alpha 2", ["predict", "img/x.png", "-c", "ck.pth", "--alpha", "2"], "refuse"),
    ("predict --alpha nan", ["predict", "img/x.png", "-c", "ck.pth", "--alpha", "nan"], "refuse"),
    ("predict --ratios 0", ["predict", "img/x.png", "-c", "ck.pth", "-o", "p4", "--ratios", "0"], "refuse"),
    ("predict -o unwritable", ["predict", "img/x.png", "-c", "ck.pth", "-o", "/proc/cssformer-probe"], "refuse"),
    ("predict existing outputs --force", ["predict", "img/x.png", "-c", "ck.pth", "-o", "preds", "--force",
                                          "--device", "cpu"], "ok"),
    # --- flops / autotune / top level
    ("flops --json the checkpoint", ["flops", "--model", "cssformer-nano", "--size", "64", "64", "--json",
                                     "ck.pth"], "refuse"),
    ("flops --json existing file", ["flops", "--json", "results.json"], "refuse"),
    ("flops --size 16 16", ["flops", "--size", "16", "16"], "refuse"),
    ("flops --size 100000 100000", ["flops", "--size", "100000", "100000"], "refuse"),
    ("flops --set bad YAML", ["flops", "--set", "n_points=[1"], "refuse"),
    ("flops --set unknown key", ["flops", "--model", "cssformer-nano", "--size", "64", "64", "--set", "foo=1"],
     "refuse"),
    ("flops --model unknown", ["flops", "--model", "resnet"], "refuse"),
    ("flops --num-classes 0", ["flops", "--num-classes", "0"], "refuse"),
    ("autotune --model unknown", ["autotune", "--model", "resnet"], "refuse"),
    ("autotune --size 100000", ["autotune", "--model", "cssformer-nano", "--size", "100000", "100000"], "refuse"),
    ("autotune --shape garbage", ["autotune", "--shape", "1,2,3"], "refuse"),
    ("unknown command", ["bake"], "refuse"),
]
# "fail": refused after some work (exit 2, the last stderr line is the error, no traceback)
CASES_18 = [
    # --- issue 18: data loss
    ("export --output the checkpoint", ["export", "ck.pth", "--format", "safetensors", "--output", "ck.pth"], "refuse"),
    ("export --output the checkpoint --force", ["export", "ck.pth", "--format", "safetensors", "--output", "ck.pth",
                                                "--force"], "refuse"),
    ("export existing --output", ["export", "ck.pth", "--format", "safetensors", "--output", "old.safetensors"],
     "refuse"),
    ("plot --out a checkpoint", ["plot", "run", "--out", "run/iter_000002.pth", "--force"], "refuse"),
    ("plot --out the log", ["plot", "run", "--out", "run/log.jsonl", "--force"], "refuse"),
    ("predict into a folder another predict writes", ["predict", "img/x.png", "-c", "ck.pth", "-o", "plocked"],
     "refuse"),
    ("sweep --out existing file", ["sweep", "--collect", "--work-root", "nosweep", "--out", "notes.md"], "refuse"),
    ("sweep two configs of one name", ["sweep", "sweep_cfg/a/x.yaml", "sweep_cfg/b/x.yaml", "--work-root", "sw"],
     "refuse"),
    # --- issue 18: silent wrong results
    ("train --lr 1e30 (diverges)", ["train", *T, "--iters", "6", "--lr", "1e30", "--checkpoint-interval", "2",
                                    "--eval-interval", "1000", "--work-dir", "diverged"], "fail"),
    ("eval a NaN checkpoint", ["eval", "nan.pth"], "refuse"),
    ("predict a NaN checkpoint", ["predict", "img/x.png", "-c", "nan.pth", "-o", "p5"], "refuse"),
    ("export a NaN checkpoint", ["export", "nan.pth", "--format", "safetensors", "--output", "nan.safetensors"],
     "refuse"),
    ("folder: duplicate class names", ["train", *F, "--dataset", "folder", "--data-root", "data_dupnames",
                                       "--work-dir", "w"], "refuse"),
    ("folder: x.png and x.jpg, one mask", ["train", *F, "--dataset", "folder", "--data-root", "data_twoext",
                                           "--work-dir", "w"], "refuse"),
    ("folder: dangling symlink", ["train", *F, "--dataset", "folder", "--data-root", "data_dangling",
                                  "--work-dir", "w"], "refuse"),
    ("--config repeated key", ["train", "--config", "dup.yaml"], "refuse"),
    ("predict a 16-bit grey PNG", ["predict", "img16/g.png", "-c", "ck.pth", "-o", "p16", "--device", "cpu"], "ok"),
    ("predict a float TIFF of 0..300", ["predict", "imgf/f.tif", "-c", "ck.pth", "-o", "pf", "--device", "cpu"],
     "refuse"),
    # --- issue 18: wrong exits and tracebacks
    ("--config alias bomb", ["train", "--config", "alias.yaml"], "refuse"),
    ("--config nested 3000 deep", ["train", "--config", "deep.yaml"], "refuse"),
    ("--config iters: null", ["train", "--config", "null_iters.yaml"], "refuse"),
    ("--set iters=", ["train", "--set", "iters="], "refuse"),
    ("--set lr=null", ["train", "--set", "lr=null"], "refuse"),
    ("--set betas=null", ["train", "--set", "betas=null"], "refuse"),
    ("--set seed=", ["train", "--set", "seed="], "refuse"),
    ("model_args window_size 0", ["train", *T, "--set", "model_args={window_size: 0}", "--work-dir", "w"], "refuse"),
    ("model_args csf_heads 0", ["train", *T, "--set", "model_args={csf_heads: 0}", "--work-dir", "w"], "refuse"),
    ("model_args n_points 1.5", ["train", *T, "--set", "model_args={n_points: 1.5}", "--work-dir", "w"], "refuse"),
    ("flops --set dim=0", ["flops", "--model", "cssformer-nano", "--size", "64", "64", "--set", "dim=0"], "refuse"),
    ("synthetic length -1", ["train", *TINY[:-2], "--iters", "2", "--set", "dataset_args={length: -1}",
                             "--work-dir", "w"], "refuse"),
    ("synthetic size 0", ["train", *TINY[:-2], "--iters", "2", "--set", "dataset_args={size: 0}", "--work-dir", "w"],
     "refuse"),
    ("classes.txt not UTF-8", ["train", *F, "--dataset", "folder", "--data-root", "data_latin1", "--work-dir", "w"],
     "refuse"),
    ("checkpoint build_args a list", ["eval", "meta_list_args.pth"], "refuse"),
    ("checkpoint palette value 300", ["predict", "img/x.png", "-c", "meta_palette300.pth", "-o", "p6"], "refuse"),
    ("checkpoint palette of two channels", ["predict", "img/x.png", "-c", "meta_palette2.pth", "-o", "p7"], "refuse"),
    ("checkpoint iteration 'abc'", ["train", *T, "--work-dir", "w", "--resume", "meta_iter_abc.pth"], "refuse"),
    ("checkpoint build_args name a file", ["eval", "meta_pretrained.pth", "--device", "cpu", "--num-workers", "0",
                                           "--out", "named.json"], "ok"),
    ("--pretrained hostile pickle", ["train", *T, "--pretrained", "hostile.pth", "--work-dir", "w"], "refuse"),
    ("--pretrained 1-D position table", ["train", *T, "--pretrained", "flat_table.pth", "--work-dir", "w"], "refuse"),
    ("eval: a worker's bad image", ["eval", "ck.pth", "--dataset", "folder", "--data-root", "data_badimg",
                                    "--num-workers", "1", "--device", "cpu"], "refuse"),
    ("export --opset 1000", ["export", "ck.pth", "--format", "onnx", "--output", "ck.onnx", "--opset", "1000"],
     "refuse"),
    ("configs --show a binary file", ["configs", "--show", "binary.yaml"], "refuse"),
    ("plot a malformed log", ["plot", "badlog"], "refuse"),
]
CASES += CASES_18
FILES_THAT_MUST_NOT_CHANGE_EVEN_WITH_FORCE = ("ck.pth",)


def snapshot(root: Path) -> dict[str, str]:
    out = {}
    for p in root.rglob("*"):
        if p.is_file() and ".lock" not in p.name:
            out[str(p.relative_to(root))] = hashlib.sha1(p.read_bytes()).hexdigest()
    return out


def run_case(s: Path, name: str, argv: list[str], expected: str) -> dict:
    before = snapshot(s)
    started = time.perf_counter()
    r = cli(argv, s)
    after = snapshot(s)
    lost = sorted(k for k in before if after.get(k) != before[k])
    if expected == "ok":  # the one file the case was told to replace may change
        lost = [k for k in lost if k in FILES_THAT_MUST_NOT_CHANGE_EVEN_WITH_FORCE or
                not any(k == a or k.startswith(a.rstrip("/") + "/") for a in argv)]
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    refusal = lines[-1] if lines else ""
    if expected == "refuse":  # one line, before any work
        ok = r.returncode == 2 and len(lines) == 1 and refusal.startswith("cssformer") and "Traceback" not in r.stderr
    elif expected == "fail":  # after some work (progress lines on stderr): the last line is the error
        ok = r.returncode == 2 and refusal.startswith("cssformer") and "Traceback" not in r.stderr
    else:
        ok = r.returncode == 0
    ok = ok and "weights_only" not in r.stderr and not lost and not (s / "PWNED").exists()
    outcome = f"exit {r.returncode}" + (f", {refusal}" if expected != "ok" or r.returncode else "")
    if lost:
        outcome += f"; CHANGED/DELETED {lost}"
    return {"name": name, "cmd": "cssformer " + " ".join(a if a and " " not in a else repr(a) for a in argv),
            "expected": expected, "ok": ok, "outcome": outcome, "seconds": time.perf_counter() - started}


def kill_case(s: Path, kind: str, sig: int, rng: random.Random, n: int) -> dict:
    """Start a command, kill it after a random delay, check what it left."""
    import torch  # noqa: F401 - imported once here so the checks below are quick

    from cssformer.engine.checkpoint import load_checkpoint

    work = s / f"kill_{kind}_{n}"
    if kind == "train":
        args = ["train", *TINY, "--iters", "400", "--eval-interval", "6", "--checkpoint-interval", "3",
                "--work-dir", str(work)]
    elif kind == "eval":
        args = ["eval", "ck.pth", "--device", "cpu", "--num-workers", "0", "--aug-test", "--dataset", "folder",
                "--data-root", "data_big", "--out", str(work) + ".json"]
    else:
        for i in range(12):
            png(s / f"kill_in_{n}" / f"im{i}.png", 160, 160, value=20 * i)
        args = ["predict", f"kill_in_{n}", "-c", "ck.pth", "-o", str(work), "--aug-test", "--device", "cpu"]
    # SIGINT as in a terminal's foreground job, also when a script started the probe with `&` (its jobs
    # start with SIGINT ignored, and training then leaves it ignored, as Python does)
    proc = subprocess.Popen([sys.executable, "-m", "cssformer.cli", *args], cwd=s, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    started = time.monotonic()
    if kind == "train":  # a random point after the first checkpoint: steps, evaluations, checkpoint writes
        while not (work / "last_checkpoint").exists() and proc.poll() is None and time.monotonic() - started < 600:
            time.sleep(0.1)
        time.sleep(rng.uniform(0, 8))
    else:
        time.sleep(rng.uniform(6, 30))
    delay = time.monotonic() - started
    still_running = proc.poll() is None
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    problems = []
    last = ([line for line in err.splitlines() if line.strip()] or [""])[-1]  # training's progress goes to stderr
    # training: a checkpoint of the current step and "stopped by ..." (130 / 143); other commands: Ctrl-C is
    # "interrupted" (130), SIGTERM ends them as the signal does
    said = ("stopped by" in last) if kind == "train" else ("interrupted" in last)
    if sig == signal.SIGINT and still_running and ("Traceback" in err or proc.returncode != 130 or
                                                   not last.startswith("cssformer") or not said):
        problems.append(f"Ctrl-C gave exit {proc.returncode}, last line {last!r}")
    if sig == signal.SIGTERM and still_running and kind == "train" and (
            "Traceback" in err or proc.returncode != 143 or not last.startswith("cssformer train: stopped by SIGTERM")):
        problems.append(f"SIGTERM gave exit {proc.returncode}, last line {last!r}")
    verb = {signal.SIGKILL: "killed", signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}[sig]
    detail = f"{verb} after {delay:.1f} s" + ("" if still_running else " (had already ended)") + (
        f", exit {proc.returncode}" if sig != signal.SIGKILL else "")
    if kind == "train":
        pths = sorted(work.glob("*.pth")) if work.is_dir() else []
        for p in pths:
            try:
                load_checkpoint(p)
            except Exception as e:  # noqa: BLE001
                problems.append(f"corrupt {p.name}: {e}")
        if (work / "last_checkpoint").is_file():
            name = (work / "last_checkpoint").read_text().strip()
            it = load_checkpoint(work / name)["iteration"]
            r = cli(["train", *TINY, "--iters", str(it + 2), "--eval-interval", "6", "--checkpoint-interval", "3",
                     "--work-dir", str(work), "--resume"], s)
            if r.returncode != 0:
                problems.append(f"resume failed: {r.stderr.strip().splitlines()[-1:]}")
            detail += f"; {len(pths)} checkpoints whole, resumed from iteration {it}"
        else:
            detail += "; killed before the first checkpoint"
        if work.is_dir() and any(p.name.endswith(".tmp") for p in work.iterdir()) and \
                (work / "last_checkpoint").is_file():
            problems.append("temporary file left after resume")
    elif kind == "eval":
        out = Path(str(work) + ".json")
        if out.exists():
            try:
                json.loads(out.read_text())
                detail += "; result file complete"
            except ValueError:
                problems.append("torn result file")
        else:
            detail += "; no result file (killed before the end)"
    else:
        from PIL import Image

        pngs = sorted(work.glob("*.png")) if work.is_dir() else []
        for p in pngs:
            try:
                Image.open(p).load()
            except Exception:  # noqa: BLE001
                problems.append(f"torn {p.name}")
        if any(p.name.endswith(".tmp") for p in work.glob(".*")) if work.is_dir() else False:
            detail += "; a temporary file of the interrupted write remains"
        detail += f"; {len(pngs)} complete images"
    name = f"{ {signal.SIGKILL: 'kill -9', signal.SIGINT: 'Ctrl-C', signal.SIGTERM: 'SIGTERM'}[sig]} during {kind}"
    return {"name": name, "cmd": "cssformer " + " ".join(args), "expected": "no damage", "ok": not problems,
            "outcome": detail + ("; " + "; ".join(problems) if problems else ""), "seconds": delay}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--kills", type=int, default=12, help="random interrupts (default 12)")
    parser.add_argument("--only", nargs="+", help="run the cases whose name contains one of these")
    parser.add_argument("--issue18", action="store_true", help="run only the cases added by issue 18")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    results = []
    with tempfile.TemporaryDirectory(prefix="cssformer-probe-") as tmp:
        s = Path(tmp)
        fixtures(s)
        locker = subprocess.Popen([sys.executable, "-c", "import sys, time; from cssformer.engine.workdir import "
                                   "WorkDirLock; lock = WorkDirLock(sys.argv[1]).acquire(); print('locked', flush=True); "
                                   "time.sleep(3600)", str(s / "locked")], env=ENV, stdout=subprocess.PIPE, text=True)
        locker.stdout.readline()
        plocker = subprocess.Popen([sys.executable, "-c", "import sys, time; from cssformer.io_safety import "
                                    "FolderLock; lock = FolderLock(sys.argv[1], '--out').acquire(); print('locked', "
                                    "flush=True); time.sleep(3600)", str(s / "plocked")], env=ENV,
                                   stdout=subprocess.PIPE, text=True)
        plocker.stdout.readline()
        try:
            for name, argv, expected in CASES:
                if args.only and not any(part in name for part in args.only):
                    continue
                if args.issue18 and (name, argv, expected) not in CASES_18:
                    continue
                results.append(run_case(s, name, argv, expected))
                print(("ok  " if results[-1]["ok"] else "BAD ") + name + ": " + results[-1]["outcome"],
                      file=sys.stderr, flush=True)
        finally:
            locker.kill()
            plocker.kill()
        for n in range(args.kills):
            kind = ("train", "train", "eval", "predict")[n % 4]
            sig = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)[n % 3]
            results.append(kill_case(s, kind, sig, rng, n))
            print(("ok  " if results[-1]["ok"] else "BAD ") + results[-1]["name"] + ": " + results[-1]["outcome"],
                  file=sys.stderr, flush=True)
    if args.markdown:
        print("| # | case | command | expected | outcome | as expected |")
        print("|---|---|---|---|---|---|")
        for i, r in enumerate(results, 1):
            cells = [str(i), r["name"], f"`{r['cmd']}`", r["expected"], r["outcome"].replace("|", "/"),
                     "yes" if r["ok"] else "**no**"]
            print("| " + " | ".join(cells) + " |")
    bad = [r for r in results if not r["ok"]]
    print(f"{len(results)} cases, {len(results) - len(bad)} as expected, {len(bad)} not", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
