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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=path_arg, help="YAML file of config keys, or the name of a shipped "
                        "config (`cssformer configs` lists them; see docs/training.md)")
    for key, (kind, help_line) in FLAGS.items():
        kind = path_arg if key in PATHS else finite(kind)
        parser.add_argument("--" + key.replace("_", "-"), dest=key, type=kind, default=None, help=help_line)
    parser.add_argument("--compile", nargs="?", const="inductor", default=None, choices=COMPILE_BACKENDS,
                        metavar="BACKEND", help="torch.compile the model for training (bare flag: inductor; "
                        "aot_eager / eager only trace)")
    parser.add_argument("--tensorboard", action="store_true", default=None,
                        help="also write loss, lr and mIoU as TensorBoard events (<work dir>/tensorboard)")
    parser.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT", type=path_arg,
                        help="continue from a checkpoint (no value: the work dir's newest)")
    add_set_option(parser, "any config key, value in YAML syntax, e.g. --set test.ratios=[0.5,1.0,1.5]")


def run(args: argparse.Namespace) -> int:
    from cssformer.engine.config import load_yaml, resolve
    from cssformer.engine.trainer import train

    from cssformer.configs import config_path
    file_values = load_yaml(config_path(args.config)) if args.config else {}
    flags = {k: getattr(args, k) for k in FLAGS if getattr(args, k) is not None}
    if args.tensorboard:
        flags["tensorboard"] = True
    if args.compile:
        flags["compile"] = args.compile
    flags.update(parse_set(args.overrides))
    cfg = resolve(file_values, flags)
    default_work_dir = "work_dir" not in file_values and "work_dir" not in flags
    result = train(cfg, resume=args.resume, default_work_dir=default_work_dir)
    return 0 if result is not None else 1
