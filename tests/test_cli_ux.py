"""What a user sees of the command line: the resolved-config view (`cssformer config`, `--print-config`),
`--dry-run`, `--version`, defaults in `--help`, plain logs into a pipe, and the small defects of issue 16
(configs' paper column, slide stride default, export suffix, an ONNX file given as a checkpoint)."""
import io
import os
import subprocess
import sys

import pytest
from PIL import Image

from cssformer.cli import COMMANDS, main, train_main
from cssformer.engine.config import load_yaml, resolve

TINY = ["--crop-size", "32", "--batch-size", "2", "--num-workers", "0", "--device", "cpu",
        "--set", "dataset_args={length: 4, size: 40}", "--set", "log_interval=1", "--warmup-iters", "1"]


def _words(text: str) -> str:
    return " ".join(text.split())


# --- resolved config -------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [[], ["cssformer-swin-t_ade20k-512", "--iters", "100"],
                                  ["--crop-size", "128", "--set", "test.mode=slide", "--accum-steps", "2"]])
def test_resolved_config_fed_back_gives_the_same_training_config(argv, tmp_path, capsys):
    assert main(["config", *argv]) == 0
    printed = capsys.readouterr().out
    path = tmp_path / "resolved.yaml"
    path.write_text(printed)
    from cssformer.commands.train import resolved
    from cssformer.cli import Parser
    from cssformer.commands import config as config_command

    parser = Parser(prog="t")
    config_command.add_arguments(parser)
    args = parser.parse_args(argv)
    expected, _, _ = resolved(args, args.config)
    again = resolve(load_yaml(path), {})
    assert again == expected
    assert list(again) == list(expected)  # same keys in the same order


def test_resolved_config_says_where_each_value_comes_from(tmp_path, capsys):
    cfg = tmp_path / "mine.yaml"
    cfg.write_text("lr: 0.01\n")
    assert main(["config", str(cfg), "--iters", "20", "--set", "test.mode=slide", "--crop-size", "128"]) == 0
    lines = {line.split(":")[0].strip(): line.strip() for line in capsys.readouterr().out.splitlines()
             if not line.startswith("#")}
    assert lines["iters"] == "iters: 20  # --iters"
    assert lines["lr"] == f"lr: 0.01  # --config {cfg}"
    assert lines["mode"] == "mode: slide  # --set"  # a key of the test section
    assert lines["batch_size"] == "batch_size: 16  # dataset profile (synthetic)"
    assert lines["stride"] == "stride: [85, 85]  # default, auto: stride = 2/3 of the crop"
    assert lines["seed"] == "seed: 0  # default"


def test_train_print_config_is_the_config_view(capsys):
    assert main(["config", "--iters", "7"]) == 0
    view = capsys.readouterr().out
    assert train_main(["--iters", "7", "--print-config"]) == 0
    assert capsys.readouterr().out == view


def test_dry_run_checks_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    work = tmp_path / "w"
    assert main(["train", *TINY, "--iters", "5", "--eval-interval", "2", "--accum-steps", "2",
                 "--work-dir", str(work), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert not work.exists() and list(tmp_path.iterdir()) == []
    text = _words(out)
    assert "nothing was written" in text
    assert "batch 2 images per optimizer step = 1 process(es) x 2 accumulation step(s) x 1 images" in text
    assert "iterations 1..5" in text and "evaluation 3 time(s)" in text
    assert f"work dir {work} (new)" in text
    assert "iter_000002.pth, iter_000004.pth, iter_000005.pth" in text and "config.yaml" in text
    # what training refuses, the dry run refuses too (one line, exit 2)
    assert main(["train", *TINY, "--batch-size", "3", "--accum-steps", "2", "--dry-run"]) == 2
    assert "not divisible" in capsys.readouterr().err


# --- --version and --help ------------------------------------------------------------------------------

def test_version_on_every_command(capsys):
    from importlib import metadata

    for argv in (["--version"], *([name, "--version"] for name in COMMANDS)):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 0
        line = capsys.readouterr().out.strip()
        assert line.startswith("cssformer 0.1.0 (torch ") and metadata.version("torch") in line, (argv, line)
    with pytest.raises(SystemExit):
        train_main(["--version"])
    assert capsys.readouterr().out.startswith("cssformer 0.1.0")


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["flops", "--help"])
    text = _words(capsys.readouterr().out)
    assert "(default: cssformer-swin-t)" in text and "(default: 512 512)" in text
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = _words(capsys.readouterr().out)
    assert "training iterations (default: 160000; dataset profiles: synthetic 160; folder 20000;" in text
    assert "random seed (default: 0)" in text


# --- plain logs ----------------------------------------------------------------------------------------

def test_plain_log_of_a_training_run_into_a_pipe(tmp_path):
    work = tmp_path / ("a-long-work-dir-name-" * 4) / "run"
    env = {**os.environ, "COLUMNS": "60"}
    done = subprocess.run([sys.executable, "-m", "cssformer.cli", "train", *TINY, "--iters", "2", "--eval-interval",
                           "2", "--work-dir", str(work)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    err = done.stderr.splitlines()
    assert err and all(line.startswith("[elapsed ") and " ETA " in line for line in err), err
    assert any("iter 2/2" in line for line in err)
    starts = [line for line in err if "evaluating 4 images at iteration 2" in line]
    ends = [line for line in err if "evaluation done: 4 images" in line]
    assert len(starts) == 1 and len(ends) == 1 and err.index(starts[0]) < err.index(ends[0])
    assert "━" not in done.stderr and "train " not in done.stderr  # no progress bar in a pipe (stdout: tables)
    everything = done.stdout + done.stderr
    assert sum(str(work) in line for line in everything.splitlines()) >= 2  # paths never wrapped


def test_evaluation_progress_lines_every_tenth(monkeypatch):
    from rich.console import Console

    from cssformer.engine import logger

    buffer = io.StringIO()
    bar = logger.TrainProgress(10, 0, console=Console(file=buffer, width=300))
    clock = iter(range(1000))
    monkeypatch.setattr(logger.time, "perf_counter", lambda: float(next(clock)))
    bar.update(5)
    bar.eval_progress(0, 100)
    for done in range(5, 101, 5):
        bar.eval_progress(done, 100)
    lines = buffer.getvalue().splitlines()
    assert lines[0].endswith("evaluating 100 images at iteration 5") and "evaluation done: 100 images" in lines[-1]
    middle = [line for line in lines if "evaluating: " in line]
    assert [line.split("evaluating: ")[1].split(" ")[0] for line in middle] == [f"{d}/100" for d in range(10, 100, 10)]
    assert all(line.startswith("[elapsed ") for line in lines)


# --- small defects -------------------------------------------------------------------------------------

def test_configs_paper_column_names_tables_once(capsys):
    from cssformer.commands.configs import paper_row

    assert main(["configs"]) == 0
    out = capsys.readouterr().out
    assert "TADE20K" not in out and "TCityscapes" not in out and "ADE20K CSSFormer" in out and "T7 CSSFormer" in out
    assert paper_row({"table": "5", "row": "+CIA", "miou_ss": 47.66}) == "T5 +CIA 47.66"
    assert paper_row({"table": "Cityscapes", "row": "CSSFormer Swin-B (768)"}) == "Cityscapes CSSFormer Swin-B (768)"


def test_slide_stride_defaults_to_two_thirds_of_the_window():
    assert resolve({}, {"crop_size": 128, "test.mode": "slide"})["test"]["stride"] == [85, 85]
    assert resolve({}, {"crop_size": [96, 150]})["test"]["stride"] == [64, 100]
    for dataset, stride in (("ade20k", 341), ("cityscapes", 512), ("pascal_context_59", 320), ("synthetic", 43)):
        assert resolve({}, {"dataset": dataset, "data_root": "x"})["test"]["stride"] == [stride, stride]
    assert resolve({}, {"test": {"crop": [60, 60], "stride": [10, 20]}})["test"]["stride"] == [10, 20]  # set: kept
    # eval / predict: a new --crop without --stride gets 2/3 of that window, not the checkpoint's stride
    import argparse

    from cssformer.commands.options import add_test_options, test_options_from

    parser = argparse.ArgumentParser()
    add_test_options(parser)
    cfg = resolve({}, {})
    assert test_options_from(parser.parse_args(["--mode", "slide", "--crop", "96", "96"]), cfg).stride == (64, 64)
    assert test_options_from(parser.parse_args(["--crop", "96", "96", "--stride", "8", "8"]), cfg).stride == (8, 8)


@pytest.mark.parametrize("fmt, suffix", [("safetensors", ".onnx"), ("onnx", ".pt2"), ("pt2", "")])
def test_export_refuses_an_output_suffix_of_another_format(fmt, suffix, tmp_path, capsys):
    out = tmp_path / f"model{suffix}"
    assert main(["export", str(tmp_path / "best.pth"), "--format", fmt, "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"expected a .{fmt} file for --format {fmt}" in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []


def test_predict_with_an_onnx_file_says_it_is_not_a_checkpoint(tmp_path, capsys):
    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    model = tmp_path / "model.onnx"
    model.write_bytes(b"\x08\x08\x12\x07pytorch")  # the first bytes of an ONNX protobuf
    assert main(["predict", str(image), "-c", str(model), "-o", str(tmp_path / "out"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is an ONNX export, not a checkpoint" in err and "\n" not in err and "operand" not in err
    assert not (tmp_path / "out").exists()
