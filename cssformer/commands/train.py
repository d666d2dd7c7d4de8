"""``cssformer train`` / ``cssformer-train``: with no arguments, cssformer-nano on the built-in
synthetic dataset (a few minutes on a CPU); otherwise a YAML config and/or flags. Under ``torchrun``
it trains with DDP (one process per GPU, or gloo on CPUs)."""
from __future__ import annotations

import argparse

from cssformer.commands.options import add_set_option, finite, parse_set, path_arg
from cssformer.engine.runtime import COMPILE_BACKENDS

# flag -> config key (the flags are a convenience; every config key can also be set with --set)
FLAGS = {
    "model": (str, "model preset (cssformer.list_models())"),
    "dataset": (str, "synthetic | folder | ade20k | cityscapes | pascal_context_59 | pascal_context_60 | coco_stuff_10k"),
    "data_root": (str, "dataset root folder"),
    "crop_size": (int, "training size: the crop, and the size the model is built for (square; [h, w] "
                       "through the config file)"),
    "batch_size": (int, "images per optimizer step in total (all processes x accumulation steps)"),
    "accum_steps": (int, "micro-steps per optimizer step (gradient accumulation); default 1"),
    "iters": (int, "training iterations"),
    "lr": (float, "peak learning rate (AdamW)"),
    "weight_decay": (float, "AdamW weight decay (not on norms, biases, position tables)"),
    "warmup_iters": (int, "linear warmup iterations before the poly decay"),
    "amp": (str, "fp32 | bf16 | fp16 (mixed precision; none: fp32)"),
    "grad_clip": (float, "max gradient norm (off by default)"),
    "eval_interval": (int, "evaluate every N iterations (and at the end)"),
    "checkpoint_interval": (int, "checkpoint every N iterations (default: eval interval)"),
    "work_dir": (str, "where config.yaml, log.jsonl and checkpoints go"),
    "seed": (int, "random seed"),
    "pretrained": (str, "local backbone weight file"),
    "num_workers": (int, "data loader worker processes"),
    "device": (str, "auto | cpu | cuda"),
}
PATHS = ("data_root", "work_dir", "pretrained")


def _default_help(key: str) -> str:
    """``(default: 160000; synthetic 160, folder 20000, ...)``: the built-in default and the dataset
    profiles that change it (``cssformer config`` prints the resolved value)."""
    from cssformer.engine.config import AUTO_RULES, DEFAULTS, PROFILES

    default = DEFAULTS[key]
    if default == "auto" and key in AUTO_RULES:
        default = f"auto, {AUTO_RULES[key]}"
    by_value: dict = {}
    for dataset, profile in PROFILES.items():
        if key in profile and profile[key] != DEFAULTS[key]:
            by_value.setdefault(profile[key], []).append(dataset)
    profiles = "; ".join(f"{'/'.join(names)} {value}" for value, names in by_value.items())
    return f"(default: {default}" + (f"; dataset profiles: {profiles}" if profiles else "") + ")"


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that set config keys (shared by ``train`` and ``config``)."""
    for key, (kind, help_line) in FLAGS.items():
        kind = path_arg if key in PATHS else finite(kind)
        help_line = help_line if "default" in help_line else f"{help_line} {_default_help(key)}"
        parser.add_argument("--" + key.replace("_", "-"), dest=key, type=kind, default=None, help=help_line)
    parser.add_argument("--compile", nargs="?", const="inductor", default=None, choices=COMPILE_BACKENDS,
                        metavar="BACKEND", help="torch.compile the model for training (bare flag: inductor; "
                        "aot_eager / eager only trace; default: none)")
    parser.add_argument("--tensorboard", action="store_true", default=None,
                        help="also write loss, lr and mIoU as TensorBoard events (<work dir>/tensorboard)")
    add_set_option(parser, "any config key, value in YAML syntax, e.g. --set test.ratios=[0.5,1.0,1.5]")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=path_arg, help="YAML file of config keys, or the name of a shipped "
                        "config (`cssformer configs` lists them; see docs/training.md)")
    add_config_arguments(parser)
    parser.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT", type=path_arg,
                        help="continue from a checkpoint (no value: the work dir's newest)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (YAML, each value's source) and exit; as `cssformer config`")
    parser.add_argument("--dry-run", action="store_true",
                        help="build data and model, check what training checks first, print the plan and exit "
                        "0 writing nothing")


def resolved(args: argparse.Namespace, config: str | None) -> tuple[dict, dict, bool]:
    """(the resolved config, each key's source, whether the work dir is the default one) for the
    config file or shipped config name ``config`` and the flags in ``args``."""
    from cssformer.configs import config_path
    from cssformer.engine.config import load_yaml, resolve, value_sources

    path = config_path(config) if config else None
    file_values = load_yaml(path) if path else {}
    flags = {k: getattr(args, k) for k in FLAGS if getattr(args, k) is not None}
    labels = {k: "--" + k.replace("_", "-") for k in flags}
    if args.tensorboard:
        flags["tensorboard"], labels["tensorboard"] = True, "--tensorboard"
    if args.compile:
        flags["compile"], labels["compile"] = args.compile, "--compile"
    overrides = parse_set(args.overrides)
    flags.update(overrides)
    labels.update({k: "--set" for k in overrides})
    cfg = resolve(file_values, flags)
    sources = value_sources(file_values, flags, f"--config {config}", labels)
    default_work_dir = "work_dir" not in file_values and "work_dir" not in flags
    return cfg, sources, default_work_dir


def run(args: argparse.Namespace) -> int:
    cfg, sources, default_work_dir = resolved(args, args.config)
    if args.print_config:
        from cssformer.commands.config import resolved_yaml

        print(resolved_yaml(cfg, sources), end="")
        return 0
    if args.dry_run:
        from cssformer.engine.trainer import dry_run

        print_plan(dry_run(cfg, resume=args.resume, default_work_dir=default_work_dir))
        return 0
    from cssformer.engine.trainer import train

    result = train(cfg, resume=args.resume, default_work_dir=default_work_dir)
    return 0 if result is not None else 1


def checkpoint_iterations(cfg: dict, start: int = 0) -> list[int]:
    """The iterations after ``start`` at which a run saves ``iter_*.pth`` (every checkpoint interval and
    the last; evaluations that improve the best mIoU add more)."""
    its = list(range(start - start % cfg["checkpoint_interval"] + cfg["checkpoint_interval"], cfg["iters"] + 1,
                     cfg["checkpoint_interval"]))
    return its if cfg["iters"] in its else its + [cfg["iters"]]


def print_plan(trainer) -> None:
    """What a training run of ``trainer`` (set up by ``engine.trainer.dry_run``) would do, as plain lines."""
    cfg, info = trainer.cfg, trainer.info
    params = sum(p.numel() for p in trainer.model.parameters()) / 1e6
    start = trainer.iteration
    evals = [i for i in range(start + 1, cfg["iters"] + 1) if i % cfg["eval_interval"] == 0 or i == cfg["iters"]]
    ckpts = checkpoint_iterations(cfg, start)
    h, w = cfg["crop_size"]
    names = [f"iter_{i:06d}.pth" for i in ckpts]
    shown = ", ".join(names[:2] + (["..."] if len(names) > 3 else []) + names[2:][-1:])
    would_write = ["config.yaml", "log.jsonl", f"{shown} (the newest {cfg['keep_checkpoints']} kept)",
                   "best.pth", "last_checkpoint", "curves.png (with matplotlib)"]
    if cfg["tensorboard"]:
        would_write.append("tensorboard/")
    lines = [
        "dry run of cssformer-train: nothing was written",
        f"model       {cfg['model']}: {params:.2f} M parameters, {trainer.train_set.num_classes} classes, "
        f"built for {h}x{w}",
        f"data        {cfg['dataset']}: {len(trainer.train_set)} training / {len(trainer.val_set)} validation "
        f"images, crop {h}x{w}",
        f"iterations  {start + 1}..{cfg['iters']}" + (f" (resumed at {start})" if start else "")
        + f", warmup {cfg['warmup_iters']}, lr {cfg['lr']:g}, log every {cfg['log_interval']}",
        f"batch       {cfg['batch_size']} images per optimizer step = {info.world_size} process(es) x "
        f"{trainer.accum} accumulation step(s) x {trainer.micro} images",
        f"device      {info.device}, amp {cfg['amp']}, compile {cfg['compile']}",
        f"evaluation  {len(evals)} time(s) (every {cfg['eval_interval']} and at the end), {cfg['test']['mode']} "
        f"inference" + (f", window {cfg['test']['crop']} stride {cfg['test']['stride']}"
                        if cfg['test']['mode'] == "slide" else ""),
        f"work dir    {trainer.work_dir}" + (" (exists)" if trainer.work_dir.exists() else " (new)"),
        f"would write {'; '.join(would_write)}",
    ]
    print("\n".join(lines))
