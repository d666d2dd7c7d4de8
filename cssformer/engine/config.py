"""Training configuration: one flat dict. Precedence: built-in defaults < the dataset's profile <
the YAML file (``--config``) < command-line flags. An unknown key is an error naming the key."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from cssformer.engine import legacy
from cssformer.engine.runtime import COMPILE_BACKENDS, precision
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
    "aux_weight": AUTO,          # weight of the auxiliary CE (auto: the loss's default, models/loss.py AUX_WEIGHT)
    "amp": "fp32",               # fp32 | bf16 | fp16 (engine/runtime.py; "none" is the old name of fp32)
    "compile": "none",           # none | inductor | aot_eager | eager: torch.compile the training model
    "tf32": False,               # fp32 matmuls / convs on TF32 tensor cores (CUDA, Ampere+); PyTorch's default: off
    "grad_clip": None,           # max gradient norm, null = off
    "sync_bn": True,             # convert BatchNorm to SyncBatchNorm under torchrun
    # evaluation (during training and `cssformer eval`)
    "eval_interval": 16000,
    # the test options (engine/inference.py TestOptions; eval / predict flags --mode, --crop, ...):
    # mode whole | slide, crop: sliding window (default: crop_size), stride (default: the dataset's),
    # ratios: multi-scale test ratios, flip. A file or --set gives some of them: test: {mode: slide}
    "test": {"mode": "whole", "crop": AUTO, "stride": AUTO, "ratios": [1.0], "flip": False},
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
    "cityscapes": {"iters": 80000, "batch_size": 16, "eval_interval": 8000, "test": {"mode": "slide"}},
    "pascal_context_59": {"iters": 80000, "batch_size": 16, "eval_interval": 8000, "test": {"mode": "slide"}},
    "pascal_context_60": {"iters": 80000, "batch_size": 16, "eval_interval": 8000, "test": {"mode": "slide"}},
    "coco_stuff_10k": {"iters": 80000, "batch_size": 16, "eval_interval": 8000, "test": {"mode": "slide"}},
}


MAX_DEPTH = 32  # nesting of a config's YAML (the deepest shipped config has 3 levels)


class _ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also refuses aliases (``*name``: a few hundred bytes of nested aliases
    expand to gigabytes), nesting deeper than :data:`MAX_DEPTH` (Python's recursion limit otherwise) and
    a key given twice in one mapping (the second would silently win)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, f"the alias *{event.anchor} is refused: write the value "
                                              "out (aliases can expand a small file into gigabytes)", event.start_mark)
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:
                continue  # an unhashable key: SafeLoader's own error follows
            if first is not key_node:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice (first on line {first.start_mark.line + 1}); "
                    "expected each key once", key_node.start_mark)
        return super().construct_mapping(node, deep)


def parse_yaml(text: str) -> Any:
    """``yaml.safe_load`` with the limits of :class:`_ConfigLoader` (config files and ``--set`` values)."""
    return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"config file {path} is a folder: expected a YAML file")
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"))
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
    data = legacy.upgrade(data, f"config file {path}")
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
        if key == "test" and isinstance(value, dict):
            for sub, v in value.items():
                if sub not in DEFAULTS["test"]:
                    raise UsageError(f"{where}: unknown key 'test.{sub}'; valid keys of test: "
                                     f"{', '.join(DEFAULTS['test'])}")
                _check_type(f"test.{sub}", v, where)


# types of the keys whose default is "auto" or null
_TYPES = {"crop_size": (int, list, tuple), "resize_scale": (list, tuple), "ratio_range": (list, tuple),
          "test.crop": (int, list, tuple), "test.stride": (int, list, tuple), "checkpoint_interval": (int,),
          "device": (str,), "pretrained": (str,), "data_root": (str,), "grad_clip": (int, float),
          "work_dir": (str,), "aux_weight": (int, float)}
# keys that may be null (``~``, an empty ``--set key=``): everything else needs a value of its type
NULLABLE = {"pretrained", "data_root", "grad_clip", "work_dir", "resize_scale", "model_args", "dataset_args",
            "sources", "reference"}


def _check_type(key: str, value: Any, where: str) -> None:
    kinds = {bool: (bool,), int: (int,), float: (int, float), str: (str,), list: (list, tuple), dict: (dict,)}
    default = DEFAULTS["test"][key[5:]] if key.startswith("test.") else DEFAULTS[key]
    expected = _TYPES.get(key) or kinds[type(default)]
    names = "/".join(t.__name__ for t in expected) + (" or auto" if default == AUTO else "")
    if value is None:
        if key in NULLABLE:
            return
        raise UsageError(f"{where}: {key!r} must be {names}, got null (no value)")
    if isinstance(value, str) and value == AUTO and default == AUTO:
        return
    if not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected):
        hint = ""
        if isinstance(value, str) and float in expected:
            try:
                float(value)
                hint = " (YAML reads a number without a dot, like 1e-4, as text: write 1.0e-4)"
            except ValueError:
                pass
        raise UsageError(f"{where}: {key!r} must be {names}, got {value!r}{hint}")


def resolve(file_values: dict[str, Any], flag_values: dict[str, Any]) -> dict[str, Any]:
    """Merges defaults, the dataset profile, the file and the flags; fills every ``auto``."""
    from cssformer.data.registry import DATASETS

    file_values, flag_values = legacy.upgrade(file_values, None), legacy.upgrade(flag_values, "command line")
    check_keys(flag_values, "command line")
    dataset = flag_values.get("dataset") or file_values.get("dataset") or DEFAULTS["dataset"]
    if dataset not in DATASETS:
        raise UsageError(f"unknown dataset {dataset!r}: expected one of {', '.join(DATASETS)}")
    cfg = {**DEFAULTS, **PROFILES.get(dataset, {}), **file_values, **flag_values}
    # the test section merges key by key (a file's test: {mode: slide} keeps the other defaults)
    layers = (DEFAULTS, PROFILES.get(dataset, {}), file_values, flag_values)
    cfg["test"] = {k: v for layer in layers for k, v in (layer.get("test") or {}).items()}
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
    test = cfg["test"]
    if test["crop"] == AUTO:
        test["crop"] = list(cfg["crop_size"])
    if test["stride"] == AUTO:
        try:
            test["stride"] = default_stride(as_hw(test["crop"], "test.crop", lo=1))
        except ValueError as err:
            raise UsageError(str(err)) from None
    if cfg["aux_weight"] == AUTO:
        from cssformer.models.loss import AUX_WEIGHT
        cfg["aux_weight"] = AUX_WEIGHT
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
              "ratio_range": "the dataset's resize ratios", "aux_weight": "the loss's default",
              "checkpoint_interval": "eval_interval", "work_dir": "work_dirs/<model>_<dataset>"}
# the same for the keys of the ``test`` section
TEST_AUTO_RULES = {"crop": "crop = crop_size", "stride": "stride = 2/3 of the crop"}


def value_sources(file_values: dict[str, Any], flag_values: dict[str, Any], file_label: str = "config file",
                  flag_labels: dict[str, str] | None = None) -> dict[str, str]:
    """Where each key of ``resolve(file_values, flag_values)`` comes from: ``default``, ``dataset profile
    (NAME)``, ``file_label`` or the flag (``flag_labels[key]``, else ``command line``); a filled ``auto``
    adds its rule, e.g. ``default, auto: stride = 2/3 of the crop``."""
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
        if key == "test":  # and each of its keys: test.mode, ... (a file or --set gives some of them)
            layers = [(f"dataset profile ({dataset})", profile), (file_label, file_values)]
            for sub in DEFAULTS["test"]:
                sub_source, value = "default", DEFAULTS["test"][sub]
                for label, values in layers:
                    if sub in (values.get("test") or {}):
                        sub_source, value = label, values["test"][sub]
                    if f"test.{sub}" in values:
                        sub_source, value = label, values[f"test.{sub}"]
                for name in ("test", f"test.{sub}"):
                    given = flag_values.get(name)
                    if name == f"test.{sub}" and name in flag_values or isinstance(given, dict) and sub in given:
                        sub_source = (flag_labels or {}).get(name, "command line")
                        value = given[sub] if isinstance(given, dict) else given
                if value == AUTO and sub in TEST_AUTO_RULES:
                    sub_source += f", auto: {TEST_AUTO_RULES[sub]}"
                sources[f"test.{sub}"] = sub_source
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
    for key in ("lr", "weight_decay", "warmup_ratio", "poly_power", "min_lr", "cat_max_ratio", "aux_weight"):
        if not math.isfinite(cfg[key]) or cfg[key] < 0:
            raise UsageError(f"{key} must be a finite number >= 0, got {cfg[key]}")
    if cfg["lr"] <= 0:
        raise UsageError(f"lr must be > 0, got {cfg['lr']}")
    betas = cfg["betas"]
    if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
        raise UsageError(f"betas must be [b1, b2] with 0 <= b < 1, got {betas}")
    try:
        cfg["amp"] = precision(cfg["amp"])
    except ValueError as err:
        raise UsageError(str(err)) from None
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
    """The test options (also those of ``cssformer eval`` / ``predict`` flags), checked by
    :class:`~cssformer.engine.inference.TestOptions`; the ``test`` section with plain values."""
    from cssformer.engine.inference import TestOptions

    try:
        options = TestOptions.from_config(cfg)
    except (TypeError, ValueError) as err:
        raise UsageError(str(err)) from None
    cfg["test"] = {k: v for k, v in options.as_dict().items() if k != "scale"}


def save_yaml(cfg: dict[str, Any], path: str | Path) -> None:
    from cssformer.engine.checkpoint import atomic_write_bytes

    atomic_write_bytes(Path(path), yaml.safe_dump(cfg, sort_keys=False).encode())
