"""Options shared by several commands: the test-time flags of ``eval`` and ``predict``, the one
``--set KEY=VALUE`` parser, ``--num-classes`` and ``--force``."""
from __future__ import annotations

import argparse
import math

from cssformer.errors import UsageError

PAPER_SCALES = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
DEFAULT_NUM_CLASSES = 60  # PASCAL Context, the paper's FLOPs table (classes only change the last layer)


def add_test_options(parser: argparse.ArgumentParser) -> None:
    """``--mode``, ``--crop``, ``--stride``, ``--ratios``, ``--flip`` (the test options: config ``test.mode``,
    ... and ``TestOptions`` fields of the same names), ``--aug-test``, ``--device``, ``--amp``, ``--compile``.
    ``--scales`` is the deprecated name of ``--ratios``."""
    parser.add_argument("--mode", choices=["whole", "slide"], help="whole-image or sliding-window inference")
    parser.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), help="sliding window size")
    parser.add_argument("--stride", type=int, nargs=2, metavar=("H", "W"),
                        help="sliding window stride (default: the config's; with --crop, 2/3 of the window)")
    parser.add_argument("--ratios", type=float, nargs="+",
                        help="test scale ratios (> 0), e.g. 0.5 0.75 1.0 1.25 1.5 1.75")
    parser.add_argument("--scales", type=float, nargs="+", dest="old_scales", help=argparse.SUPPRESS)
    parser.add_argument("--flip", action="store_true", help="add horizontally flipped inputs")
    parser.add_argument("--aug-test", action="store_true",
                        help=f"the paper's multi-scale protocol: scales {PAPER_SCALES} + flip")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    add_runtime_options(parser, "inference")


def add_runtime_options(parser: argparse.ArgumentParser, what: str, default_amp: str | None = "fp32") -> None:
    """``--amp`` (bf16 / fp16 autocast; ``none`` is the old name of fp32) and ``--compile [BACKEND]``
    (torch.compile; bare: inductor)."""
    from cssformer.engine.runtime import COMPILE_BACKENDS, PRECISIONS, precision_arg

    parser.add_argument("--amp", type=precision_arg, choices=PRECISIONS, default=default_amp,
                        help=f"mixed precision of the {what} (autocast; default: {default_amp or 'the config'})")
    parser.add_argument("--compile", nargs="?", const="inductor", default=None, choices=COMPILE_BACKENDS,
                        metavar="BACKEND", help=f"torch.compile the model for the {what} (bare flag: inductor; "
                        "aot_eager / eager only trace)")


def test_options_from(args: argparse.Namespace, cfg: dict) -> "TestOptions":  # noqa: F821
    """The test options: the checkpoint's config ``cfg``, overridden by the flags, checked."""
    import warnings

    from cssformer.engine.config import check_test_settings
    from cssformer.engine.inference import TestOptions

    cfg = dict(cfg, test=dict(cfg["test"]))
    if getattr(args, "old_scales", None) and not getattr(args, "ratios", None):
        warnings.warn("--scales is deprecated: write --ratios (read as --ratios for now)", FutureWarning, stacklevel=2)
        args.ratios = args.old_scales
    for name in ("mode", "crop", "stride", "ratios"):
        value = getattr(args, name, None)
        if value:
            cfg["test"][name] = list(value) if isinstance(value, (list, tuple)) else value
    if args.crop and not args.stride:  # a new window gets its own overlap, not the checkpoint's stride
        from cssformer.engine.config import default_stride
        cfg["test"]["stride"] = default_stride(args.crop)
    if args.flip:
        cfg["test"]["flip"] = True
    if args.aug_test:
        cfg["test"]["ratios"], cfg["test"]["flip"] = PAPER_SCALES, True
    check_test_settings(cfg)
    return TestOptions.from_config(cfg)


def add_set_option(parser: argparse.ArgumentParser, help_line: str) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=help_line)


def parse_set(items: list[str], tuples: bool = False) -> dict:
    """``--set KEY=VALUE`` items -> ``{key: YAML value}`` (lists as tuples with ``tuples``)."""
    import yaml

    from cssformer.engine.config import parse_yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--set: got {item!r}, expected KEY=VALUE")
        try:
            parsed = parse_yaml(value)
        except yaml.YAMLError as err:
            from cssformer.engine.config import yaml_problem

            raise UsageError(f"--set {key}: value {value!r}: {yaml_problem(err)}") from None
        out[key] = tuple(parsed) if tuples and isinstance(parsed, list) else parsed
    return out


def add_num_classes(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--num-classes", type=int, default=DEFAULT_NUM_CLASSES,
                        help=f"classes of the logits for {what} (default {DEFAULT_NUM_CLASSES})")


def check_num_classes(n: int) -> None:
    if not 1 <= n <= 65536:
        raise UsageError(f"--num-classes: got {n}, expected 1..65536")


def add_force(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--force", action="store_true", help=f"replace {what} that already exist")


def finite(kind):
    """An argparse type: ``float`` that refuses nan and inf."""
    def parse(text: str):
        value = kind(text)
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"got {text!r}, expected a finite number")
        return value
    parse.__name__ = kind.__name__
    return parse


def path_arg(text: str) -> str:
    """An argparse type for paths: refuses an empty string (it would silently mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("got an empty path, expected a file or folder name")
    return text
