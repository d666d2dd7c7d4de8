"""Training configuration: one flat dict. Precedence: built-in defaults < the dataset's profile <
the YAML file (``--config``) < command-line flags. An unknown key is an error naming the key."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from cssformer.engine.runtime import AMP_CHOICES, COMPILE_BACKENDS
from cssformer.errors import UsageError
from cssformer.sizes import as_hw

AUTO = "auto"  # "take the dataset's standard value" (crop, resize scale, ratio range, stride)

DEFAULTS: dict[str, Any] = {
    # model
    "model": "cssformer-nano",
    "model_args": {},            # extra build_model overrides, e.g. {ffn_dim: 1024}
    "pretrained": None,          # local backbone weight file
    # data
    "dataset": "synthetic",      # synthetic | folder | ade20k | cityscapes | pascal_context_59 | coco_stuff_10k
    "data_root": None,
    "dataset_args": {},          # folder: {num_classes: K}; synthetic: {size: S, length: N, seed: s}
    "crop_size": AUTO,           # int or [h, w]
    "resize_scale": AUTO,        # [long, short] RandomResize / test resize aims at; null = image's own size
    "ratio_range": AUTO,         # [lo, hi] of RandomResize
    "cat_max_ratio": 0.75,
    "photometric": True,
    "num_workers": 2,
    # optimisation
    "batch_size": 8,             # total per optimizer step, over all processes and accumulation steps
    "accum_steps": 1,            # micro-steps per optimizer step: each process loads batch / (procs x accum)
    "iters": 160000,
    "lr": 6e-5,
    "weight_decay": 0.01,
    "betas": [0.9, 0.999],
    "warmup_iters": 1500,
    "warmup_ratio": 1e-6,
    "poly_power": 1.0,
    "min_lr": 0.0,
    "amp": "none",               # none | bf16 | fp16
    "compile": "none",           # none | inductor | aot_eager | eager: torch.compile the training model
    "grad_clip": None,           # max gradient norm, null = off
    "sync_bn": True,             # convert BatchNorm to SyncBatchNorm under torchrun
    # evaluation (during training and `cssformer eval`)
    "eval_interval": 16000,
    "test_mode": "whole",        # whole | slide
    "test_crop": AUTO,           # sliding window size (default: crop_size)
    "test_stride": AUTO,         # sliding window stride (default: the dataset's)
    "test_scales": [1.0],        # multi-scale test ratios
    "test_flip": False,
    # run
    "log_interval": 50,
    "checkpoint_interval": AUTO,  # default: eval_interval
    "keep_checkpoints": 2,       # iter_*.pth files kept (best.pth is kept apart)
    "work_dir": None,            # default: work_dirs/<model>_<dataset>
    "tensorboard": False,        # also write the logged scalars as TensorBoard events (<work_dir>/tensorboard)
    "seed": 0,
    "device": AUTO,              # auto | cpu | cuda
    # provenance, not used by training: where each value comes from, the paper row and weights it reproduces
    "sources": {},               # key -> "paper" | "mmseg" | ... (shipped configs, see cssformer/configs)
    "reference": {},             # paper table / row / reported mIoU, pretrained file name / url / sha256
}

# Per dataset: the settings its usual protocol uses (mmseg configs / the paper: batch 16 in total).
PROFILES: dict[str, dict[str, Any]] = {
    # the default run: learns in minutes on a 2-core CPU
    "synthetic": {"iters": 160, "batch_size": 16, "lr": 2e-3, "weight_decay": 0.01, "warmup_iters": 15,
                  "eval_interval": 80, "log_interval": 10, "num_workers": 1, "dataset_args": {"size": 96}},
    "folder": {"iters": 20000, "batch_size": 4, "lr": 6e-5, "eval_interval": 2000, "log_interval": 20},
    "ade20k": {"iters": 160000, "batch_size": 16, "eval_interval": 16000},
    "cityscapes": {"iters": 80000, "batch_size": 16, "eval_interval": 8000, "test_mode": "slide"},
    "pascal_context_59": {"iters": 80000, "batch_size": 16, "eval_interval": 8000, "test_mode": "slide"},
    "pascal_context_60": {"iters": 80000, "batch_size": 16, "eval_interval": 8000, "test_mode": "slide"},
    "coco_stuff_10k": {"iters": 80000, "batch_size": 16, "eval_interval": 8000, "test_mode": "slide"},
}


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"config file {path} is a folder: expected a YAML file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"config file not found: {path}") from None
    except UnicodeDecodeError:
        raise UsageError(f"config file {path} is not text (not UTF-8): expected a YAML file") from None
    except OSError as err:
        raise UsageError(f"cannot read config file {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise UsageError(f"config file {path}: {yaml_problem(err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must hold a mapping of keys to values, got {type(data).__name__}")
    check_keys(data, f"config file {path}")
    return data


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error in one line: what and where (python tags: refused, a config holds plain values)."""
    problem = getattr(err, "problem", None) or str(err).strip().splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    if isinstance(err, yaml.constructor.ConstructorError) and "python/" in problem:
        tag = problem.split("tag:yaml.org,2002:", 1)[-1].rstrip("'")
        return (f"the tag !!{tag}{where} would build a Python object and is refused; expected plain values "
                "(numbers, strings, lists, mappings)")
    return f"not valid YAML: {problem}{where}"


def check_keys(values: dict[str, Any], where: str) -> None:
    for key, value in values.items():
        if key not in DEFAULTS:
            close = [k for k in DEFAULTS if k.split("_")[0] == str(key).split("_")[0]]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UsageError(f"{where}: unknown key {key!r}{hint}; valid keys: {', '.join(DEFAULTS)}")
        _check_type(key, value, where)


# types of the keys whose default is "auto" or null
_TYPES = {"crop_size": (int, list, tuple), "resize_scale": (list, tuple), "ratio_range": (list, tuple),
          "test_crop": (list, tuple), "test_stride": (list, tuple), "checkpoint_interval": (int,),
          "device": (str,), "pretrained": (str,), "data_root": (str,), "grad_clip": (int, float),
          "work_dir": (str,)}


def _check_type(key: str, value: Any, where: str) -> None:
    if value is None or value == AUTO:
        return
    kinds = {bool: (bool,), int: (int,), float: (int, float), str: (str,), list: (list, tuple), dict: (dict,)}
    expected = _TYPES.get(key) or kinds[type(DEFAULTS[key])]
    if not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected):
        raise UsageError(f"{where}: {key!r} must be {'/'.join(t.__name__ for t in expected)}, "
                         f"got {value!r}")


def resolve(file_values: dict[str, Any], flag_values: dict[str, Any]) -> dict[str, Any]:
    """Merges defaults, the dataset profile, the file and the flags; fills every ``auto``."""
    from cssformer.data.registry import DATASETS

    check_keys(flag_values, "command line")
    dataset = flag_values.get("dataset") or file_values.get("dataset") or DEFAULTS["dataset"]
    if dataset not in DATASETS:
        raise UsageError(f"unknown dataset {dataset!r}: expected one of {', '.join(DATASETS)}")
    cfg = {**DEFAULTS, **PROFILES.get(dataset, {}), **file_values, **flag_values}
    spec = DATASETS[dataset]
    if cfg["crop_size"] == AUTO:
        cfg["crop_size"] = list(spec.crop)
    try:
        cfg["crop_size"] = list(as_hw(cfg["crop_size"], "crop_size"))
    except ValueError as err:
        raise UsageError(str(err)) from None
    if cfg["resize_scale"] == AUTO:
        cfg["resize_scale"] = list(spec.scale) if spec.scale else None
    if cfg["ratio_range"] == AUTO:
        cfg["ratio_range"] = list(spec.ratio_range)
    if cfg["test_crop"] == AUTO:
        cfg["test_crop"] = list(cfg["crop_size"])
    if cfg["test_stride"] == AUTO:
        cfg["test_stride"] = default_stride(cfg["test_crop"])
    if cfg["checkpoint_interval"] == AUTO:
        cfg["checkpoint_interval"] = cfg["eval_interval"]
    if cfg["work_dir"] is None:
        cfg["work_dir"] = str(Path("work_dirs") / f"{cfg['model']}_{dataset}")
    _validate(cfg)
    from cssformer.engine.accumulate import check_combinations
    check_combinations(cfg)
    return cfg


# how ``resolve`` fills a key left at ``auto`` (or ``work_dir`` left null)
AUTO_RULES = {"crop_size": "the dataset's standard crop", "resize_scale": "the dataset's test resize",
              "ratio_range": "the dataset's resize ratios", "test_crop": "crop_size",
              "test_stride": "2/3 of test_crop", "checkpoint_interval": "eval_interval",
              "work_dir": "work_dirs/<model>_<dataset>"}


def value_sources(file_values: dict[str, Any], flag_values: dict[str, Any], file_label: str = "config file",
                  flag_labels: dict[str, str] | None = None) -> dict[str, str]:
    """Where each key of ``resolve(file_values, flag_values)`` comes from: ``default``, ``dataset profile
    (NAME)``, ``file_label`` or the flag (``flag_labels[key]``, else ``command line``); a filled ``auto``
    adds its rule, e.g. ``default, auto: 2/3 of test_crop``."""
    dataset = flag_values.get("dataset") or file_values.get("dataset") or DEFAULTS["dataset"]
    profile = PROFILES.get(dataset, {})
    merged = {**DEFAULTS, **profile, **file_values, **flag_values}
    sources = {}
    for key in DEFAULTS:
        if key in flag_values:
            source = (flag_labels or {}).get(key, "command line")
        elif key in file_values:
            source = file_label
        elif key in profile:
            source = f"dataset profile ({dataset})"
        else:
            source = "default"
        if key in AUTO_RULES and (merged[key] == AUTO or (key == "work_dir" and merged[key] is None)):
            source += f", auto: {AUTO_RULES[key]}"
        sources[key] = source
    return sources


def default_stride(crop) -> list[int]:
    """The sliding-window stride for a window ``crop`` ([h, w]): 2/3 of it, rounded, as mmseg's configs
    (512 -> 341, 768 -> 512, 480 -> 320, 128 -> 85): neighbouring windows overlap by a third."""
    return [max(1, round(2 * int(c) / 3)) for c in crop]


def _validate(cfg: dict[str, Any]) -> None:
    positive = ("batch_size", "iters", "eval_interval", "log_interval", "checkpoint_interval", "keep_checkpoints")
    for key in positive:
        if int(cfg[key]) < 1:
            raise UsageError(f"{key} must be >= 1, got {cfg[key]}")
    for key in ("warmup_iters", "num_workers", "seed"):
        if int(cfg[key]) < 0:
            raise UsageError(f"{key} must be >= 0, got {cfg[key]}")
    if cfg["seed"] >= 2**32:
        raise UsageError(f"seed must be below 2**32, got {cfg['seed']}")
    for key in ("lr", "weight_decay", "warmup_ratio", "poly_power", "min_lr", "cat_max_ratio"):
        if not math.isfinite(cfg[key]) or cfg[key] < 0:
            raise UsageError(f"{key} must be a finite number >= 0, got {cfg[key]}")
    if cfg["lr"] <= 0:
        raise UsageError(f"lr must be > 0, got {cfg['lr']}")
    betas = cfg["betas"]
    if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
        raise UsageError(f"betas must be [b1, b2] with 0 <= b < 1, got {betas}")
    if cfg["amp"] not in AMP_CHOICES:
        raise UsageError(f"amp must be none, bf16 or fp16, got {cfg['amp']!r}")
    if cfg["compile"] not in COMPILE_BACKENDS:
        raise UsageError(f"compile must be one of {', '.join(COMPILE_BACKENDS)}, got {cfg['compile']!r}")
    ratio = cfg["ratio_range"]
    if len(ratio) != 2 or not all(isinstance(r, (int, float)) and math.isfinite(r) for r in ratio) \
            or not 0 < ratio[0] <= ratio[1]:
        raise UsageError(f"ratio_range must be [lo, hi] with 0 < lo <= hi, got {ratio}")
    scale = cfg["resize_scale"]
    if scale is not None and (len(scale) != 2 or not all(isinstance(v, int) and v > 0 for v in scale)):
        raise UsageError(f"resize_scale must be [long, short] of positive ints or null, got {scale}")
    if cfg["device"] not in (AUTO, "cpu", "cuda"):
        raise UsageError(f"device must be auto, cpu or cuda, got {cfg['device']!r}")
    if cfg["grad_clip"] is not None and not (math.isfinite(cfg["grad_clip"]) and cfg["grad_clip"] > 0):
        raise UsageError(f"grad_clip must be a finite number > 0 or null, got {cfg['grad_clip']}")
    if "img_size" in (cfg["model_args"] or {}):
        raise UsageError("model_args: img_size is the training size, set it as crop_size "
                         f"(got model_args.img_size = {cfg['model_args']['img_size']!r})")
    check_test_settings(cfg)


def check_test_settings(cfg: dict[str, Any]) -> None:
    """The evaluation settings (also those of ``cssformer eval`` / ``predict`` flags)."""
    if cfg["test_mode"] not in ("whole", "slide"):
        raise UsageError(f"test_mode must be whole or slide, got {cfg['test_mode']!r}")
    for key in ("test_crop", "test_stride"):
        try:
            cfg[key] = list(as_hw(cfg[key], key, lo=1))
        except ValueError as err:
            raise UsageError(str(err)) from None
    scales = cfg["test_scales"]
    if not isinstance(scales, (list, tuple)) or not scales or not all(
            isinstance(r, (int, float)) and not isinstance(r, bool) and math.isfinite(r) and 0 < r <= 16
            for r in scales):
        raise UsageError(f"test_scales must be a non-empty list of ratios in (0, 16], got {scales!r}")


def save_yaml(cfg: dict[str, Any], path: str | Path) -> None:
    from cssformer.engine.checkpoint import atomic_write_bytes

    atomic_write_bytes(Path(path), yaml.safe_dump(cfg, sort_keys=False).encode())
