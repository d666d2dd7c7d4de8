"""Issue 11 (reliability): every finding has a test here. Commands refuse bad input with one line and
exit code 2 before any work, never overwrite or delete a file they did not create unless told to, lock
their work dir, and check evaluation settings and validation data before training."""
import argparse
import os
import pickle
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from cssformer.cli import main
from cssformer.engine import checkpoint as ckpt
from cssformer.engine import workdir
from cssformer.errors import UsageError

TINY = ["--crop-size", "32", "--batch-size", "2", "--num-workers", "0", "--device", "cpu", "--warmup-iters", "1",
        "--eval-interval", "1000", "--checkpoint-interval", "2", "--set", "dataset_args={length: 4, size: 40}"]


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def _fake_checkpoint(path):
    path.write_bytes(b"precious weights")
    return path


# --- 1. data loss: outputs never replace a file, the checkpoint above all ---

def test_eval_out_refuses_the_checkpoint_and_an_existing_file(tmp_path, capsys):
    ck = _fake_checkpoint(tmp_path / "model.pth")
    assert main(["eval", str(ck), "--out", str(ck), "--force"]) == 2
    assert "is the input file" in _err(capsys) and ck.read_bytes() == b"precious weights"
    old = tmp_path / "old.json"
    old.write_text("{}")
    assert main(["eval", str(ck), "--out", str(old)]) == 2
    assert "already exists" in _err(capsys) and old.read_text() == "{}"


def test_flops_json_refuses_an_existing_file(tmp_path, capsys):
    ck = _fake_checkpoint(tmp_path / "model.pth")
    assert main(["flops", "--model", "cssformer-nano", "--size", "64", "64", "--json", str(ck)]) == 2
    assert "already exists" in _err(capsys) and ck.read_bytes() == b"precious weights"
    (tmp_path / "file").write_text("x")
    assert main(["flops", "--model", "cssformer-nano", "--json", str(tmp_path / "file" / "out.json")]) == 2
    assert "is a file, expected a folder" in _err(capsys)


# --- 2. work-dir takeover ---

def test_train_refuses_a_folder_holding_user_files(tmp_path, capsys):
    work = tmp_path / "mine"
    work.mkdir()
    (work / "config.yaml").write_text("# my notes\nlr: 1\n")
    (work / "iter_000002.pth").write_bytes(b"another run")
    (work / ".scratch.tmp").write_text("keep")
    assert main(["train", *TINY, "--iters", "2", "--work-dir", str(work)]) == 2
    assert "holds files a training run did not write" in _err(capsys)
    assert (work / "config.yaml").read_text() == "# my notes\nlr: 1\n"
    assert sorted(p.name for p in work.iterdir()) == [".scratch.tmp", "config.yaml", "iter_000002.pth"]
    (work / ".scratch.tmp").unlink()
    (work / "iter_000002.pth").unlink()  # a user's config.yaml alone: still not a run's folder
    assert main(["train", *TINY, "--iters", "2", "--work-dir", str(work)]) == 2
    assert "holds files a training run did not write (config.yaml)" in _err(capsys)
    assert sorted(p.name for p in work.iterdir()) == ["config.yaml"]


def test_a_work_dir_in_use_is_refused(tmp_path, capsys):
    work = tmp_path / "run"
    lock = workdir.WorkDirLock(work).acquire()  # another run holds it
    try:
        assert main(["train", *TINY, "--iters", "2", "--work-dir", str(work)]) == 2
        assert f"work dir {work} is in use by another run (pid {os.getpid()})" in _err(capsys)
        with pytest.raises(UsageError, match="in use"):
            workdir.WorkDirLock(work).acquire()
    finally:
        lock.release()
    assert workdir.in_use(work) is None


def test_only_our_own_temporary_files_are_cleaned(tmp_path):
    lock = workdir.WorkDirLock(tmp_path / "run").acquire()
    for name in (".iter_000004.pth.abc123.tmp", ".last_checkpoint.x.tmp", ".notes.tmp", "data.tmp"):
        (lock.path / name).write_text("x")
    lock.clean_stale_temps()
    lock.release()
    assert sorted(p.name for p in lock.path.iterdir()) == [".cssformer-run", ".lock", ".notes.tmp", "data.tmp"]


# --- 2 + 3: rotation deletes only this run's checkpoints; no resume that would replace later ones ---

def test_rotation_keeps_earlier_sessions_and_resume_chain_stays_whole(tmp_path, capsys):
    work = tmp_path / "run"
    args = [*TINY, "--work-dir", str(work), "--set", "keep_checkpoints=1"]
    assert main(["train", *args, "--iters", "4"]) == 0
    assert sorted(p.name for p in work.glob("iter_*.pth")) == ["iter_000004.pth"]
    (work / "notes.txt").write_text("mine")
    # an older checkpoint in a work dir with newer ones: refused before anything is written
    older = tmp_path / "iter_000002.pth"
    state = ckpt.load_checkpoint(work / "iter_000004.pth")
    ckpt.save_checkpoint(dict(state, iteration=2), older)
    assert main(["train", *args, "--iters", "6", "--resume", str(older)]) == 2
    assert "holds checkpoints later than iteration 2" in _err(capsys)
    assert (work / "last_checkpoint").read_text() == "iter_000004.pth"
    # resuming the newest: the first session's checkpoint is not this session's to delete
    assert main(["train", *args, "--iters", "8", "--resume"]) == 0
    assert sorted(p.name for p in work.glob("iter_*.pth")) == ["iter_000004.pth", "iter_000008.pth"]
    assert (work / "notes.txt").read_text() == "mine"
    name = (work / "last_checkpoint").read_text()
    assert ckpt.load_checkpoint(work / name)["iteration"] == 8


# --- 4. predict never overwrites silently ---

def _png(path, size=(40, 40)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((*size, 3), np.uint8)).save(path)
    return path


def test_predict_refuses_colliding_names_outputs_inside_inputs_and_existing_outputs(tmp_path, capsys):
    ck = _fake_checkpoint(tmp_path / "model.pth")
    a, b = _png(tmp_path / "a" / "x.png"), _png(tmp_path / "b" / "x.png")
    assert main(["predict", str(a), str(b), "-c", str(ck), "-o", str(tmp_path / "out")]) == 2
    assert "would both write" in _err(capsys)
    assert main(["predict", str(tmp_path / "a"), "-c", str(ck), "-o", str(tmp_path / "a")]) == 2
    assert "inside the input folder" in _err(capsys)
    assert main(["predict", str(tmp_path / "a"), "-c", str(ck), "-o", str(tmp_path / "a" / "pred")]) == 2
    assert "inside the input folder" in _err(capsys)
    out = tmp_path / "out"
    out.mkdir()
    (out / "x_mask.png").write_bytes(b"earlier prediction")
    assert main(["predict", str(a), "-c", str(ck), "-o", str(out)]) == 2
    assert "already exists" in _err(capsys) and (out / "x_mask.png").read_bytes() == b"earlier prediction"
    assert not (tmp_path / "out" / "x_overlay.png").exists()


# --- 5. bad evaluation settings and validation data: refused before training ---

@pytest.mark.parametrize("setting, message", [
    ("test.stride=[0, 0]", "test.stride: got"), ("test.ratios=[]", "test.ratios must be a non-empty list"),
    ("test.crop=[0, 8]", "test.crop: got"), ("test.ratios=[0]", "test.ratios must be")])
def test_bad_eval_settings_are_refused_before_training(tmp_path, capsys, setting, message):
    work = tmp_path / "run"
    assert main(["train", *TINY, "--iters", "2", "--work-dir", str(work), "--set", setting]) == 2
    assert message in _err(capsys) and not work.exists()


def test_a_truncated_validation_mask_is_refused_before_training(tmp_path, capsys):
    root = tmp_path / "data"
    for split in ("train", "val"):
        for i in range(2):
            _png(root / "images" / split / f"f{i}.png")
            (root / "masks" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ones((40, 40), np.uint8)).save(root / "masks" / split / f"f{i}.png")
    (root / "classes.txt").write_text("a\nb\n")
    bad = root / "masks" / "val" / "f1.png"
    bad.write_bytes(bad.read_bytes()[:-30])
    work = tmp_path / "run"
    rc = main(["train", *TINY[:-2], "--dataset", "folder", "--data-root", str(root), "--iters", "2",
               "--work-dir", str(work)])
    assert rc == 2
    assert f"cannot read mask {bad}" in _err(capsys)
    assert not work.exists()  # nothing was trained, nothing was left behind


def test_a_failing_evaluation_keeps_the_steps_done(tmp_path, monkeypatch, capsys):
    from cssformer.data.io import DatasetError
    from cssformer.engine import trainer

    def broken(*args, **kwargs):
        raise DatasetError("cannot read image val/7.png: image file is truncated")

    monkeypatch.setattr(trainer, "evaluate", broken)
    work = tmp_path / "run"
    rc = main(["train", *TINY, "--iters", "4", "--eval-interval", "2", "--set", "checkpoint_interval=1000",
               "--work-dir", str(work)])
    assert rc == 2 and "image file is truncated" in _err(capsys)
    assert (work / "last_checkpoint").read_text() == "iter_000002.pth"
    assert ckpt.load_checkpoint(work / "iter_000002.pth")["iteration"] == 2


# --- 6. silent wrong results ---

@pytest.mark.parametrize("flags, message", [
    (["--warmup-iters", "-1"], "warmup_iters must be >= 0"), (["--weight-decay", "-0.1"], "weight_decay must be"),
    (["--set", "ratio_range=[0, 0]"], "ratio_range must be"), (["--seed", "-1"], "seed must be >= 0"),
    (["--num-workers", "-1"], "num_workers must be >= 0"), (["--set", "betas=[2, 3]"], "betas must be"),
    (["--crop-size", "100000"], "crop_size: got 100000, expected an int or [h, w] of 32..4096"),
    (["--set", "model_args={img_size: 64}"], "set it as crop_size")])
def test_bad_training_values_are_refused(tmp_path, capsys, flags, message):
    assert main(["train", *TINY, "--iters", "2", "--work-dir", str(tmp_path / "w"), *flags]) == 2
    assert message in _err(capsys)


@pytest.mark.parametrize("argv", [["train", "--iter", "5"], ["train", "--lr", "nan"], ["train", "--grad-clip", "nan"],
                                  ["eval", "x.pth", "--scale", "1"], ["flops", "--num-class", "3"]])
def test_abbreviations_and_non_finite_numbers_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "error:" in _err(capsys)


@pytest.mark.parametrize("flags, message", [
    ({"ratios": [0.0]}, "test.ratios must be"), ({"ratios": [-1.0]}, "test.ratios must be"),
    ({"stride": [0, 0]}, "test.stride: got [0, 0]"), ({"crop": [0, 0]}, "test.crop: got [0, 0]")])
def test_bad_test_time_flags_are_refused(flags, message):
    from cssformer.commands.options import test_options_from
    from cssformer.engine.config import resolve

    args = argparse.Namespace(**{"mode": "slide", "crop": None, "stride": None, "ratios": None, "flip": False,
                                 "aug_test": False, **flags})
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]")):
        test_options_from(args, resolve({}, {}))


# --- 7. tracebacks ---

def test_an_empty_checkpoint_is_a_one_line_error(tmp_path, capsys):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    assert main(["eval", str(empty)]) == 2
    assert "the file is empty (0 bytes)" in _err(capsys)
    assert main(["eval", str(tmp_path)]) == 2
    assert "is a folder" in _err(capsys)


def test_a_binary_or_folder_config_is_a_one_line_error(tmp_path, capsys):
    binary = tmp_path / "c.yaml"
    binary.write_bytes(bytes(range(256)))
    assert main(["train", "--config", str(binary)]) == 2
    assert "is not text" in _err(capsys)
    assert main(["train", "--config", str(tmp_path)]) == 2
    assert "is a folder" in _err(capsys)


def _png_header_only(path, width, height):
    """A PNG whose header claims ``width x height`` (no pixel data: refused before decoding)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b""))
    return path


def test_huge_images_are_refused_before_decoding(tmp_path):
    from cssformer.data.io import DatasetError, read_image, read_mask

    bomb = _png_header_only(tmp_path / "bomb.png", 15000, 15000)  # PIL's own decompression-bomb limit
    with pytest.raises(DatasetError, match="bomb.png is too large to decode .*expected at most 64 Mpixels"):
        read_image(bomb)
    big = _png_header_only(tmp_path / "big.png", 10000, 10000)
    with pytest.raises(DatasetError, match="big.png is 10000x10000 .*expected at most 64 Mpixels"):
        read_mask(big)


def test_output_where_a_folder_is_in_the_way(tmp_path, capsys):
    ck = _fake_checkpoint(tmp_path / "model.pth")
    (tmp_path / "dir.json").mkdir()
    assert main(["eval", str(ck), "--out", str(tmp_path / "dir.json")]) == 2
    assert "is a folder: expected a file name" in _err(capsys)


def test_a_work_dir_that_cannot_be_created_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "a_file").write_text("in the way")
    assert main(["train", *TINY, "--iters", "2", "--work-dir", str(tmp_path / "a_file" / "run")]) == 2
    assert "cannot be created or written (Not a directory): expected a writable folder" in _err(capsys)
    assert main(["train", *TINY, "--iters", "2", "--work-dir", str(tmp_path / "a_file")]) == 2
    assert "is a file: expected a folder" in _err(capsys)


def test_a_write_error_is_a_one_line_error(monkeypatch, capsys):
    from cssformer.commands import flops

    def fail(args):
        raise PermissionError(13, "Permission denied", "/ro/out.json")

    monkeypatch.setattr(flops, "run", fail)
    assert main(["flops"]) == 2
    assert "cannot access /ro/out.json: Permission denied" in _err(capsys)


# --- 8. a refused checkpoint is not a trusted one; no advice to turn the safety off ---

class _Hostile:
    def __reduce__(self):
        return (os.system, ("echo owned > /dev/null",))


@pytest.mark.parametrize("content", ["hostile", "random", "truncated"])
def test_refused_checkpoints_never_suggest_turning_the_safety_off(tmp_path, capsys, content):
    path = tmp_path / "x.pth"
    if content == "hostile":
        path.write_bytes(pickle.dumps(_Hostile(), protocol=2))
    elif content == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    else:
        torch.save({"model": {"w": torch.ones(1000)}, "build_args": {}}, path)
        path.write_bytes(path.read_bytes()[:2000])
    assert main(["eval", str(path)]) == 2
    err = _err(capsys)
    assert f"{path} is not a trusted cssformer checkpoint" in err and "weights_only" not in err
    assert len(err.strip().splitlines()) == 1
    if content == "hostile":
        assert "asks to import and run posix.system" in err


# --- the reshaped CLI ---

def test_one_set_parser_and_one_num_classes_default(capsys):
    from cssformer.commands import autotune, flops, options, train

    for module in (flops, autotune):
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        assert parser.parse_args([]).num_classes == options.DEFAULT_NUM_CLASSES
    assert options.parse_set(["a=[1, 2]", "b= x"]) == {"a": [1, 2], "b": "x"}
    assert options.parse_set(["a=[1, 2]"], tuples=True) == {"a": (1, 2)}
    with pytest.raises(UsageError, match="not valid YAML"):
        options.parse_set(["a=[1"])
    with pytest.raises(UsageError, match="would build a Python object and is refused"):
        options.parse_set(["a=!!python/object/apply:os.system ['true']"])
    assert main(["flops", "--set", "n_points=[1"]) == 2
    assert "--set n_points: value '[1': not valid YAML" in _err(capsys)
    assert not hasattr(train, "_overrides") and not hasattr(flops, "_overrides")
