"""Issue 18 (third reliability round): nothing lost, nothing silently wrong. Every case has a test here
(docs/reliability.md lists them); the preemption tests send real signals."""
import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from cssformer.cli import main
from cssformer.engine import checkpoint as ckpt
from cssformer.engine import workdir
from cssformer.errors import UsageError

TINY = ["--crop-size", "32", "--batch-size", "2", "--num-workers", "0", "--device", "cpu", "--warmup-iters", "1",
        "--eval-interval", "1000", "--set", "dataset_args={length: 4, size: 40}"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(checkpoint path, its state): an untrained cssformer-nano saved as cssformer-train saves it."""
    from cssformer.data import SyntheticDataset
    from cssformer.engine.config import resolve
    from cssformer.models import build_model

    torch.manual_seed(0)
    model = build_model("cssformer-nano", 6, img_size=32)
    cfg = resolve({}, {"crop_size": 32, "dataset_args": {"length": 2, "size": 40}, "device": "cpu"})
    ds = SyntheticDataset("val", length=2, size=40)
    state = {"model": model.state_dict(), "build_args": model.build_args, "config": cfg, "iteration": 0,
             "meta": {"dataset": "synthetic", "class_names": ds.class_names, "palette": [list(c) for c in ds.palette]}}
    path = tmp_path_factory.mktemp("tiny") / "model.pth"
    ckpt.save_checkpoint(state, path)
    return path, state


def _png(path, array=None, **save):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8) if array is None else array).save(path, **save)
    return path


# --- data loss ---

def test_export_never_replaces_its_checkpoint_and_needs_force_for_an_existing_file(tiny, tmp_path, capsys):
    path, _ = tiny
    before = path.read_bytes()
    for extra in ([], ["--force"]):
        assert main(["export", str(path), "--format", "safetensors", "--output", str(path), *extra]) == 2
        assert "is the input file" in _err(capsys)
    assert path.read_bytes() == before
    old = tmp_path / "old.safetensors"
    old.write_bytes(b"an earlier export")
    assert main(["export", str(path), "--format", "safetensors", "--output", str(old)]) == 2
    assert "already exists" in _err(capsys) and old.read_bytes() == b"an earlier export"
    assert main(["export", str(path), "--format", "safetensors", "--output", str(old), "--force"]) == 0
    assert ckpt.load_checkpoint(old)["build_args"] == ckpt.load_checkpoint(path)["build_args"]


def _log(work, lines):
    work.mkdir(parents=True, exist_ok=True)
    (work / "log.jsonl").write_text("".join(line + "\n" for line in lines))


def test_plot_never_writes_onto_a_checkpoint_or_the_log(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="plot needs matplotlib (extra plot)")
    work = tmp_path / "w"
    _log(work, ['{"type": "train", "iter": 1, "loss": 2.0, "lr": 0.1}', '{"type": "eval", "iter": 1, "mIoU": null, '
                '"mAcc": 5.0, "aAcc": 9.0}'])
    (work / "iter_000002.pth").write_bytes(b"weights")
    log = (work / "log.jsonl").read_bytes()
    for target, flags, message in [("iter_000002.pth", ["--force"], "expected a .png file name"),
                                   ("log.jsonl", ["--force"], "expected a .png file name"),
                                   ("mine.png", [], "already exists")]:
        (work / "mine.png").write_bytes(b"my picture")
        assert main(["plot", str(work), "--out", str(work / target), *flags]) == 2
        assert message in _err(capsys)
    assert (work / "iter_000002.pth").read_bytes() == b"weights" and (work / "log.jsonl").read_bytes() == log
    assert (work / "mine.png").read_bytes() == b"my picture"
    assert main(["plot", str(work), "--out", str(work / "mine.png"), "--force"]) == 0
    assert main(["plot", str(work)]) == 0 and main(["plot", str(work)]) == 0  # the default view is redrawn
    assert (work / "curves.png").read_bytes()[:4] == b"\x89PNG" and not list(work.glob(".*.tmp"))


def test_a_second_predict_into_the_same_folder_is_refused_before_the_model_loads(tmp_path, capsys):
    from cssformer.io_safety import FolderLock

    image = _png(tmp_path / "in" / "x.png")
    garbage = tmp_path / "model.pth"
    garbage.write_bytes(b"not a checkpoint: loading it would be a different error")
    out = tmp_path / "out"
    held = FolderLock(out, "--out").acquire()  # another predict is writing there
    try:
        assert main(["predict", str(image), "-c", str(garbage), "-o", str(out)]) == 2
        assert f"--out {out} is being written by another cssformer process (pid {os.getpid()})" in _err(capsys)
    finally:
        held.release()
    assert not out.exists()  # the lock removes the folder it created while it is still empty
    # without the other writer: the checkpoint is the problem now, and nothing is left behind
    assert main(["predict", str(image), "-c", str(garbage), "-o", str(out)]) == 2
    assert "not a trusted cssformer checkpoint" in _err(capsys)
    import gc

    gc.collect()
    assert not out.exists()


def test_sweep_out_needs_force_or_the_markers_and_is_written_atomically(tmp_path, capsys):
    notes = tmp_path / "notes.md"
    notes.write_text("my notes\n")
    root = ["--work-root", str(tmp_path / "sweep")]
    assert main(["sweep", "--collect", *root, "--out", str(notes)]) == 2
    assert "already exists" in _err(capsys) and notes.read_text() == "my notes\n"
    marked = tmp_path / "results.md"
    marked.write_text("# head\n<!-- results:begin -->\nold\n<!-- results:end -->\ntail\n")
    assert main(["sweep", "--collect", *root, "--out", str(marked)]) == 0
    text = marked.read_text()
    assert text.startswith("# head\n<!-- results:begin -->\n| config |") and text.endswith("<!-- results:end -->\ntail\n")
    assert main(["sweep", "--collect", *root, "--out", str(notes), "--force"]) == 0
    assert notes.read_text().startswith("| config |") and not list(tmp_path.glob(".*.tmp"))


def test_sweep_refuses_two_configs_of_one_name(tmp_path, capsys):
    from cssformer.configs import list_configs

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.yaml").write_text("iters: 2\n")
    a, b = str(tmp_path / "a" / "x.yaml"), str(tmp_path / "b" / "x.yaml")
    assert main(["sweep", a, b, "--work-root", str(tmp_path / "sweep")]) == 2
    assert "are both named 'x'" in _err(capsys) and not (tmp_path / "sweep").exists()
    shipped = tmp_path / "a" / f"{list_configs()[0]}.yaml"
    shipped.write_text("iters: 2\n")
    assert main(["sweep", str(shipped), "--collect", "--work-root", str(tmp_path / "sweep")]) == 2
    assert f"both named {list_configs()[0]!r}" in _err(capsys)


# --- preemption ---

def _train_cmd(work, iters, *extra):
    return [sys.executable, "-m", "cssformer.cli", "train", *TINY, "--iters", str(iters), "--set", "log_interval=1",
            "--checkpoint-interval", "1000", "--work-dir", str(work), *extra]


def _wait_for_step(proc, work, timeout=240):
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        log = work / "log.jsonl"
        if log.is_file() and '"type": "train"' in log.read_text():
            return
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    raise AssertionError("training did not log a step in time")


@pytest.fixture
def one_thread():
    """The child runs with OMP_NUM_THREADS=1: the in-process runs compared with it use one thread too
    (another thread count sums in another order)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143)])
def test_sigterm_writes_a_checkpoint_and_the_resume_is_bit_exact(tmp_path, one_thread, sig, code):
    iters = 14
    work = tmp_path / "preempted"
    proc = subprocess.Popen(_train_cmd(work, iters), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_step(proc, work)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    last = [line for line in err.splitlines() if line.strip()][-1]
    name = (work / "last_checkpoint").read_text()
    stopped = ckpt.load_checkpoint(work / name)["iteration"]
    assert 1 <= stopped < iters and "Traceback" not in err
    assert last == (f"cssformer train: stopped by SIGTERM after iteration {stopped}/{iters}: checkpoint {work / name} "
                    f"written; continue with --resume (exit code {code})")
    assert main(["train", *TINY, "--iters", str(iters), "--checkpoint-interval", "1000", "--work-dir", str(work),
                 "--resume"]) == 0
    straight = tmp_path / "straight"
    assert main(["train", *TINY, "--iters", str(iters), "--checkpoint-interval", "1000", "--work-dir",
                 str(straight)]) == 0
    resumed = ckpt.load_checkpoint(work / f"iter_{iters:06d}.pth")
    reference = ckpt.load_checkpoint(straight / f"iter_{iters:06d}.pth")
    for key, value in reference["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    for a, b in zip(reference["optimizer"]["state"].values(), resumed["optimizer"]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_second_ctrl_c_stops_at_once_a_second_sigterm_changes_nothing():
    from cssformer.engine.trainer import StopSignals

    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, wherever pytest runs
    try:
        _second_signals(StopSignals)
    finally:
        signal.signal(signal.SIGINT, before)


def _second_signals(StopSignals):
    with StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert signals.requested == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)  # torchrun forwards the scheduler's SIGTERM: still a clean stop
        time.sleep(0.01)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_sigint_ignored_at_start_stays_ignored():
    """A job a shell script starts in the background (``cmd &`` without job control) starts with SIGINT
    ignored, and training does not take it over."""
    from cssformer.engine.trainer import StopSignals

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopSignals() as signals:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) == signals._handle
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            assert signals.requested is None
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="this torch build has no gloo backend")
def test_sigterm_under_torchrun_two_processes_stop_at_one_step_and_resume_exactly(tmp_path):
    """``python -m pytest tests/test_reliability3.py -m slow`` (about a minute on 2 cores)."""
    iters = 14
    data = ["--set", "dataset_args={length: 5, size: 40}"]
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "cssformer.cli", "train", *TINY, *data, "--iters", str(iters), "--set", "log_interval=1",
           "--checkpoint-interval", "1000"]
    work = tmp_path / "ddp"
    proc = subprocess.Popen([*run, "--work-dir", str(work)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    _wait_for_step(proc, work)
    os.killpg(proc.pid, signal.SIGTERM)  # as a scheduler stops a job: every process of it
    _, err = proc.communicate(timeout=180)
    assert "stopped by SIGTERM after iteration" in err, err[-3000:]
    state = ckpt.load_checkpoint(work / (work / "last_checkpoint").read_text())
    assert len(state["rng"]) == 2 and 1 <= state["iteration"] < iters
    for resume, folder in ((["--resume"], work), ([], tmp_path / "straight")):
        done = subprocess.run([*run, "--work-dir", str(folder), *resume], env=ENV, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    resumed = ckpt.load_checkpoint(work / f"iter_{iters:06d}.pth")["model"]
    reference = ckpt.load_checkpoint(tmp_path / "straight" / f"iter_{iters:06d}.pth")["model"]
    assert all(torch.equal(v, resumed[k]) for k, v in reference.items())


# --- silent wrong results ---

def test_a_diverging_run_stops_before_a_non_finite_step_and_writes_no_such_checkpoint(tmp_path, capsys):
    work = tmp_path / "w"
    assert main(["train", *TINY, "--iters", "8", "--lr", "1e30", "--checkpoint-interval", "2",
                 "--work-dir", str(work)]) == 2
    err = capsys.readouterr().err
    assert "cssformer train: error: loss is nan at iteration" in err and "Traceback" not in err
    if (work / "last_checkpoint").exists():  # any checkpoint left has finite weights
        state = ckpt.load_checkpoint(work / (work / "last_checkpoint").read_text())
        assert ckpt.nonfinite_weight(state["model"]) is None
    for line in (work / "log.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda token: pytest.fail(f"log.jsonl holds {token}"))


def test_a_checkpoint_of_non_finite_weights_is_never_written(tmp_path, monkeypatch, capsys):
    from cssformer.engine import trainer

    monkeypatch.setattr(trainer.ckpt, "nonfinite_weight", lambda weights: "nan in decoder.x.weight")
    work = tmp_path / "w"
    assert main(["train", *TINY, "--iters", "2", "--checkpoint-interval", "1", "--work-dir", str(work)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("cssformer train: error: the weights are not finite at iteration 1 "
                                                   "(nan in decoder.x.weight): no checkpoint written")
    assert not list(work.glob("*.pth")) and not (work / "last_checkpoint").exists()


def test_eval_predict_and_export_refuse_non_finite_weights(tiny, tmp_path, capsys):
    _, state = tiny
    weights = dict(state["model"])
    key = next(k for k, v in weights.items() if v.is_floating_point())
    weights[key] = weights[key].clone().fill_(float("nan"))
    bad = tmp_path / "nan.pth"
    ckpt.save_checkpoint(dict(state, model=weights), bad)
    image = _png(tmp_path / "x.png")
    for argv in (["eval", str(bad)], ["predict", str(image), "-c", str(bad), "-o", str(tmp_path / "p")],
                 ["export", str(bad), "--format", "safetensors", "--output", str(tmp_path / "x.safetensors")]):
        assert main(argv) == 2
        assert f"checkpoint {bad} holds non-finite weights (nan in {key})" in _err(capsys)
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "p").exists()


def test_images_are_decoded_by_their_bit_depth(tmp_path):
    from cssformer.data.io import DatasetError, read_image

    grey16 = np.array([[0, 257, 40000, 65535]], np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    assert read_image(tmp_path / "g16.png")[..., 0].tolist() == [[0, 1, 156, 255]]
    floats = np.array([[0.0, 0.5, 1.0]], np.float32)
    Image.fromarray(floats).save(tmp_path / "f.tif")
    assert read_image(tmp_path / "f.tif")[..., 1].tolist() == [[0, 128, 255]]
    Image.fromarray(floats * 300).save(tmp_path / "f300.tif")
    with pytest.raises(DatasetError, match=r"f300.tif is a floating-point image with values in 0..300: expected 0..1"):
        read_image(tmp_path / "f300.tif")


def test_exif_orientation_turns_images_and_masks_alike(tmp_path):
    from cssformer.data.io import image_size, read_image, read_mask

    pixels = np.zeros((20, 30, 3), np.uint8)
    pixels[0, 0] = 255  # top-left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    _png(tmp_path / "photo.png", pixels, exif=exif)
    upright = read_image(tmp_path / "photo.png")
    assert upright.shape == (30, 20, 3) and image_size(tmp_path / "photo.png") == (20, 30)
    assert upright[0, -1].tolist() == [255, 255, 255]  # stored top-left is displayed top-right
    mask = np.zeros((20, 30), np.uint8)
    mask[0, 0] = 1
    Image.fromarray(mask).save(tmp_path / "mask.png", exif=exif)
    assert read_mask(tmp_path / "mask.png")[0, -1] == 1


def _folder(root, images=("a.png",), classes="a\nb\n"):
    for name in images:
        _png(root / "images" / name)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for name in images:
        Image.fromarray(np.ones((40, 40), np.uint8)).save(root / "masks" / (os.path.splitext(name)[0] + ".png"))
    if classes is not None:
        (root / "classes.txt").write_bytes(classes.encode("latin-1"))
    return root


@pytest.mark.parametrize("case, message", [
    ("duplicate names", "class names of .* repeat 'a': expected one name per class"),
    ("x.png and x.jpg", "images .*a.jpg and .*a.png both pair with the mask .*a.png"),
    ("dangling image link", "b.png is a symbolic link to .*gone.png, which does not exist"),
    ("classes.txt latin-1", "classes.txt is not UTF-8 text"),
])
def test_folder_datasets_refuse_what_they_would_silently_get_wrong(tmp_path, case, message):
    from cssformer.data.folder import folder_dataset
    from cssformer.data.io import DatasetError

    root = _folder(tmp_path / "d", images=("a.png", "a.jpg") if case == "x.png and x.jpg" else ("a.png",),
                   classes={"duplicate names": "a\nb\na\n", "classes.txt latin-1": "caf\xe9\nb\n"}.get(case, "a\nb\n"))
    if case == "dangling image link":
        os.symlink(tmp_path / "gone.png", root / "images" / "b.png")
    with pytest.raises(DatasetError, match=message):
        folder_dataset(root, "train")


def test_a_dangling_mask_link_is_named(tmp_path):
    from cssformer.data.folder import folder_dataset
    from cssformer.data.io import DatasetError

    root = _folder(tmp_path / "d")
    (root / "masks" / "a.png").unlink()
    os.symlink(tmp_path / "gone.png", root / "masks" / "a.png")
    with pytest.raises(DatasetError, match="has no mask: .*a.png is a symbolic link to .*gone.png"):
        folder_dataset(root, "train")


def test_log_jsonl_is_strict_json(tmp_path):
    from cssformer.engine.logger import JsonlLog

    log = JsonlLog(tmp_path / "log.jsonl")
    log.write(type="eval", iter=1, mIoU=float("nan"), IoU={"a": float("inf"), "b": 50.0}, loss=torch.tensor(1.5))
    record = json.loads((tmp_path / "log.jsonl").read_text(), parse_constant=lambda t: pytest.fail(t))
    assert record["mIoU"] is None and record["IoU"] == {"a": None, "b": 50.0} and record["loss"] == 1.5


# --- YAML and config values ---

@pytest.mark.parametrize("text, message", [
    ("lr: 1.0e-4\nlr: 2.0e-4\n", "the key 'lr' is given twice (first on line 1)"),
    ("sources: &a [x, x]\nreference: {b: *a}\n", "the alias *a is refused"),
    ("sources: " + "[" * 3000 + "]" * 3000 + "\n", "nested deeper than 32 levels"),
])
def test_yaml_duplicate_keys_aliases_and_deep_nesting_are_refused(tmp_path, capsys, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert main(["train", "--config", str(path)]) == 2
    assert message in _err(capsys)


def test_an_alias_bomb_is_refused_in_set_values_too(capsys):
    bomb = "[&a [x, x], &b [*a, *a], [*b, *b]]"
    assert main(["train", "--set", f"sources={bomb}"]) == 2
    assert "the alias *a is refused" in _err(capsys)


@pytest.mark.parametrize("setting, message", [
    ("iters=", "'iters' must be int, got null"), ("iters=~", "'iters' must be int, got null"),
    ("lr=null", "'lr' must be int/float, got null"), ("betas=null", "'betas' must be list/tuple, got null"),
    ("seed=", "'seed' must be int, got null"), ("lr=auto", "'lr' must be int/float, got 'auto'"),
    ("lr=1e-4", "write 1.0e-4"), ("iters=1.5", "'iters' must be int, got 1.5"),
    ("crop_size=", "'crop_size' must be int/list/tuple or auto, got null"),
    ("dataset_args={length: -1}", "synthetic dataset length: got -1, expected an int >= 1"),
    ("dataset_args={size: 0}", "synthetic dataset size: got 0, expected an int >= 1"),
    ("model_args={window_size: 0}", "window_size: got 0, expected a positive int"),
    ("model_args={csf_heads: 0}", "csf_heads: got 0, expected a positive int"),
    ("model_args={n_points: 1.5}", "n_points: got 1.5, expected a positive int"),
])
def test_null_and_wrong_values_are_one_line_errors(tmp_path, capsys, setting, message):
    work = tmp_path / "w"
    assert main(["train", *TINY, "--iters", "2", "--work-dir", str(work), "--set", setting]) == 2
    assert message in _err(capsys) and not work.exists()


def test_flops_refuses_a_zero_dimension(capsys):
    assert main(["flops", "--model", "cssformer-nano", "--size", "64", "64", "--set", "dim=0"]) == 2
    assert "dim: got 0, expected a positive int" in _err(capsys)


# --- crafted files ---

@pytest.mark.parametrize("change, message", [
    (lambda s: s.update(build_args=["cssformer-nano", 6]), "'build_args' is list, expected a mapping"),
    (lambda s: s["meta"].update(palette=[[300, 0, 0]] * 6), "meta 'palette' is not a list of [r, g, b] colours"),
    (lambda s: s["meta"].update(palette=[[0, 0]] * 6), "meta 'palette' is not a list of [r, g, b] colours"),
    (lambda s: s.update(iteration="abc"), "'iteration' is 'abc', expected an int >= 0"),
    (lambda s: s.update(config=[1]), "'config' is list, expected a mapping"),
])
def test_crafted_checkpoint_metadata_is_refused(tiny, tmp_path, change, message):
    import copy

    _, state = tiny
    state = copy.deepcopy(state)
    change(state)
    path = tmp_path / "crafted.pth"
    ckpt.save_checkpoint(state, path)
    with pytest.raises(UsageError, match=f"{path} is not a usable cssformer checkpoint: " + message.replace("[", r"\[")
                       .replace("]", r"\]")):
        ckpt.load_checkpoint(path)


def test_safetensors_metadata_that_is_not_json_is_refused(tiny, tmp_path):
    from safetensors.torch import save

    path = tmp_path / "x.safetensors"
    path.write_bytes(save({"w": torch.zeros(2)}, metadata={"format": ckpt.SAFETENSORS_FORMAT, "build_args": "{nope"}))
    with pytest.raises(UsageError, match="its 'build_args' metadata is not JSON"):
        ckpt.load_checkpoint(path)


def test_loading_a_checkpoint_opens_no_file_its_build_args_name(tiny, tmp_path):
    from cssformer.engine.model_io import load_trained

    _, state = tiny
    path = tmp_path / "named.pth"
    ckpt.save_checkpoint(dict(state, build_args=dict(state["build_args"], pretrained=str(tmp_path / "absent.pth"))),
                         path)
    model, _ = load_trained(path, torch.device("cpu"))  # building with the named file would fail: it is absent
    assert "pretrained" not in model.build_args


class _Hostile:
    def __reduce__(self):
        return (os.system, ("echo owned > /dev/null",))


def test_pretrained_files_hostile_or_malformed_are_named(tmp_path):
    from cssformer.models import build_model

    hostile = tmp_path / "hostile.pth"
    hostile.write_bytes(pickle.dumps(_Hostile(), protocol=2))
    with pytest.raises(ValueError) as info:
        build_model("cssformer-nano", 2, img_size=32, pretrained=str(hostile))
    assert "hostile.pth' as a weights-only torch file: it asks to import and run posix.system" in str(info.value)
    assert "weights_only" not in str(info.value)
    weights = build_model("cssformer-nano", 2, img_size=32).backbone.body.state_dict()
    key = next(k for k in weights if k.endswith("relative_position_bias_table"))
    weights[key] = weights[key].flatten()
    torch.save(weights, tmp_path / "flat.pth")
    with pytest.raises(ValueError, match=f"flat.pth' key {key} has shape .*: expected a 2-D relative position table"):
        build_model("cssformer-nano", 2, img_size=32, pretrained=str(tmp_path / "flat.pth"))


def test_a_data_error_in_an_eval_worker_names_the_file(tiny, tmp_path):
    from cssformer.data.folder import folder_dataset
    from cssformer.data.io import DatasetError
    from cssformer.engine.distributed import DistInfo
    from cssformer.engine.evaluation import evaluate
    from cssformer.engine.model_io import load_trained

    root = _folder(tmp_path / "d", images=("a.png", "b.png"), classes="\n".join("abcdef") + "\n")
    bad = root / "images" / "b.png"
    bad.write_bytes(bad.read_bytes()[:60])
    model, _ = load_trained(tiny[0], torch.device("cpu"))
    options = {"mode": "whole", "crop": [32, 32], "stride": [32, 32], "scale": None, "ratios": (1.0,), "flip": False}
    with pytest.raises(DatasetError) as info:
        evaluate(model, folder_dataset(root, "val"), options, DistInfo(), num_workers=1)
    first = str(info.value).splitlines()[0]
    assert first.startswith(f"cannot read image {bad}") and first.endswith("(in a data loader worker)")


def test_a_full_disk_during_a_checkpoint_write_is_one_line_and_leaves_no_file(tmp_path, monkeypatch, capsys):
    real = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(ckpt.os, "fdopen", lambda fd, mode: Full(real(fd, mode)))
    with pytest.raises(OSError) as info:
        ckpt.save_checkpoint({"model": {"w": torch.zeros(1000)}}, tmp_path / "x.pth")  # torch.save's RuntimeError
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "x.pth")
    assert list(tmp_path.iterdir()) == []
    work = tmp_path / "w"
    assert main(["train", *TINY, "--iters", "2", "--work-dir", str(work)]) == 2
    assert f"cannot access {work / 'config.yaml'}: No space left on device" in _err(capsys)


def test_export_opset_configs_show_and_plot_of_bad_files_are_one_line_errors(tmp_path, capsys):
    fake = tmp_path / "m.pth"
    fake.write_bytes(b"x")
    assert main(["export", str(fake), "--format", "onnx", "--output", str(tmp_path / "m.onnx"), "--opset", "1000"]) == 2
    assert "--opset 1000: expected 18 to 23" in _err(capsys)
    binary = tmp_path / "b.yaml"
    binary.write_bytes(bytes(range(256)))
    assert main(["configs", "--show", str(binary)]) == 2
    assert "is not text (not UTF-8)" in _err(capsys)
    for lines, message in ((['{"type": "train", "iter": "abc", "loss": 1}'], "line 1: 'iter' is 'abc'"),
                           (['{"type": "train", "iter": 1, "loss": "high"}', "{}"], "line 1: 'loss' is 'high'"),
                           (["{not json", '{"type": "eval", "iter": 1}'], "line 1 is not JSON")):
        _log(tmp_path / "w", lines)
        assert main(["plot", str(tmp_path / "w")]) == 2
        assert message in _err(capsys)


# --- one owner for the work-dir layout ---

def test_the_work_dir_layout_is_spelled_in_workdir_only():
    import inspect

    from cssformer.commands import sweep
    from cssformer.engine import curves, trainer

    assert workdir.checkpoint_name(42) == "iter_000042.pth" and workdir.checkpoint_iteration("iter_000042.pth") == 42
    assert workdir.checkpoint_iteration("iter_x.pth") is None and workdir.checkpoint_iteration("best.pth") is None
    assert ckpt.LAST is workdir.LAST and curves.LOG is workdir.LOG and curves.CURVES_PNG is workdir.CURVES
    for name in (workdir.CONFIG, workdir.LOG, workdir.TENSORBOARD, workdir.MARKER, workdir.LOCK):
        assert workdir.FRESH.match(name)
    for name in (workdir.CONFIG, workdir.LAST, workdir.BEST, workdir.CURVES, "iter_000001.pth"):
        assert workdir.OWN_TMP.match(f".{name}.abc.tmp")
    for module in (trainer, sweep, curves, ckpt):
        source = inspect.getsource(module)
        for literal in ('"log.jsonl"', '"last_checkpoint"', '"best.pth"', '"config.yaml"', '"curves.png"', '"iter_'):
            assert literal not in source, (module.__name__, literal)
