"""The training command on tiny runs: work dir contents, exact resume, checkpoints, bad input."""
import json
from pathlib import Path

import pytest
import torch
import yaml

from cssformer.cli import main
from cssformer.engine.config import PROFILES

TINY = ["--crop-size", "32", "--batch-size", "2", "--num-workers", "0", "--device", "cpu",
        "--set", "dataset_args={length: 6, size: 40}", "--set", "log_interval=1", "--warmup-iters", "2"]


def _train(tmp: Path, name: str, *extra: str) -> int:
    return main(["train", *TINY, "--work-dir", str(tmp / name), *extra])


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """4 iterations in one go, a checkpoint every 2 (kept), evaluation at 2 and 4."""
    tmp = tmp_path_factory.mktemp("train")
    rc = _train(tmp, "a", "--iters", "4", "--eval-interval", "2", "--set", "keep_checkpoints=5")
    assert rc == 0
    return tmp / "a"


def test_work_dir_holds_config_log_and_checkpoints(straight_run):
    cfg = yaml.safe_load((straight_run / "config.yaml").read_text())
    assert cfg["iters"] == 4 and cfg["model"] == "cssformer-nano" and cfg["crop_size"] == [32, 32]
    records = [json.loads(line) for line in (straight_run / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if r["type"] == "train"]
    evals = [r for r in records if r["type"] == "eval"]
    assert [r["iter"] for r in train] == [1, 2, 3, 4]
    assert all(r["loss"] > 0 and "loss_ce" in r and "loss_aux" in r and "lr" in r for r in train)
    assert [r["iter"] for r in evals] == [2, 4]
    assert set(evals[0]["IoU"]) == {"background", "large stripes", "small stripes", "checker", "speckle", "flat"}
    assert (straight_run / "last_checkpoint").read_text() == "iter_000004.pth"
    state = _load(straight_run / "iter_000004.pth")  # weights_only: tensors and plain containers only
    assert state["iteration"] == 4 and state["build_args"]["name"] == "cssformer-nano"
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "config", "meta"} <= set(state)
    assert (straight_run / "best.pth").is_file()
    assert not list(straight_run.glob(".*.tmp"))


def test_lr_follows_warmup_then_poly(straight_run):
    records = [json.loads(line) for line in (straight_run / "log.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in records if r["type"] == "train"]
    base = PROFILES["synthetic"]["lr"]
    want = [base * 1e-6, base * (1e-6 + (1 - 1e-6) / 2), base, base * 0.5]  # warmup 2, then poly to 0 at 4
    assert lrs == pytest.approx(want, rel=1e-6)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(straight_run, tmp_path):
    # N + N: continue the straight run's iteration-2 checkpoint in another work dir
    rc = _train(tmp_path, "b", "--iters", "4", "--eval-interval", "2", "--resume",
                str(straight_run / "iter_000002.pth"))
    assert rc == 0
    resumed, straight = _load(tmp_path / "b" / "iter_000004.pth"), _load(straight_run / "iter_000004.pth")
    assert resumed["model"].keys() == straight["model"].keys()
    for key, value in straight["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    for a, b in zip(resumed["optimizer"]["state"].values(), straight["optimizer"]["state"].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"])
    first = _load(straight_run / "iter_000002.pth")["model"]
    assert any(not torch.equal(first[k], v) for k, v in straight["model"].items())  # it did train


def test_occupied_work_dir_without_resume_is_refused(straight_run, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in straight_run.iterdir()}
    rc = main(["train", *TINY, "--iters", "2", "--work-dir", str(straight_run)])
    assert rc == 2
    assert "already holds a run" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in straight_run.iterdir()} == before


def test_resume_from_a_checkpoint_of_another_model_is_refused(straight_run, tmp_path, capsys):
    state = _load(straight_run / "iter_000002.pth")
    state["build_args"]["num_classes"] = 19
    state["model"] = {k: v for k, v in list(state["model"].items())[:-3]}
    torch.save(state, tmp_path / "other.pth")
    rc = _train(tmp_path, "c", "--iters", "4", "--resume", str(tmp_path / "other.pth"))
    assert rc == 2
    err = capsys.readouterr().err
    assert "other.pth is from another model" in err and "num_classes" in err
    assert not (tmp_path / "c").exists()  # nothing written


def test_unknown_config_key_names_key_and_file(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("iters: 3\nlearning_rate: 0.1\n")
    rc = main(["train", "--config", str(config), "--work-dir", str(tmp_path / "w")])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"config file {config}: unknown key 'learning_rate'" in err
    assert not (tmp_path / "w").exists()


def test_bad_config_value_and_missing_dataset(tmp_path, capsys):
    assert main(["train", "--set", "amp=fp8", "--work-dir", str(tmp_path / "w")]) == 2
    assert "amp must be fp32, bf16 or fp16 (none: fp32)" in capsys.readouterr().err
    rc = main(["train", "--dataset", "ade20k", "--data-root", str(tmp_path / "nowhere"), "--work-dir", str(tmp_path / "w")])
    assert rc == 2
    assert "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_module_entry_point_reports_bad_input_with_exit_code_2(tmp_path):
    """`python -m cssformer.cli` (what torchrun runs) handles user errors like the console scripts."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "cssformer.cli", "train", "--set", "no_such_key=1",
                           "--work-dir", str(tmp_path / "w")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "unknown key 'no_such_key'" in proc.stderr and "Traceback" not in proc.stderr


def test_default_work_dir_is_never_overwritten(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert main(["train", *TINY, "--iters", "1"]) == 0
    first, second = tmp_path / "work_dirs" / "cssformer-nano_synthetic", tmp_path / "work_dirs" / "cssformer-nano_synthetic-2"
    assert (first / "iter_000001.pth").is_file() and (second / "iter_000001.pth").is_file()
    bad = tmp_path / "bad.pth"
    bad.write_text("garbage")
    assert main(["train", *TINY, "--iters", "1", "--pretrained", str(bad)]) == 2
    assert f"pretrained: cannot read '{bad}'" in capsys.readouterr().err
    assert not (tmp_path / "work_dirs" / "cssformer-nano_synthetic-3").exists()
