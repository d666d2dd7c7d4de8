"""The ``cssformer`` command. Each sub-command lives in ``cssformer/commands/<name>.py`` and exposes
``add_arguments(parser)`` and ``run(args) -> int`` (its one-line help is in ``COMMANDS``); it is imported only when used,
so ``cssformer autotune`` does not import the model and ``cssformer flops`` is the only one that
imports fvcore."""
from __future__ import annotations

import argparse
import importlib
import sys

from cssformer.errors import UsageError  # noqa: F401 - re-exported: cssformer.cli.UsageError

# name -> (module, one-line help). Help lives here so `cssformer --help` imports no sub-command.
COMMANDS = {
    "train": ("cssformer.commands.train", "train a model (no arguments: cssformer-nano on built-in synthetic data)"),
    "eval": ("cssformer.commands.evaluate", "evaluate a checkpoint (mIoU, mAcc, aAcc, per-class IoU)"),
    "predict": ("cssformer.commands.predict", "write colour masks and overlays for images or a folder"),
    "flops": ("cssformer.commands.flops", "FLOPs and parameters of a model (fvcore)"),
    "autotune": ("cssformer.commands.autotune", "tune the sampling kernels ahead of time for this GPU"),
    "configs": ("cssformer.commands.configs", "list the shipped configs, one per row of the paper's tables"),
    "sweep": ("cssformer.commands.sweep", "train and evaluate a list of configs, write the results table"),
    "export": ("cssformer.commands.export", "export a checkpoint as ONNX, a torch.export program or safetensors"),
    "plot": ("cssformer.commands.plot", "draw loss, learning rate and mIoU curves of a work dir (PNG)"),
    "config": ("cssformer.commands.config", "print the resolved training config, each value with its source"),
}




class DefaultsFormatter(argparse.HelpFormatter):
    """``--help`` shows each option's default: ``(default: X)`` after the help of every option with a
    default value (not for flags, unset options, or a help that already names its default)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (default in (None, False, [], argparse.SUPPRESS) or "default" in text or action.nargs == 0
                or not action.option_strings):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        return f"{text} (default: {shown})"


class Parser(argparse.ArgumentParser):
    """Every parser of the CLI: no abbreviated flags (``--iter`` is not ``--iters``), a usage error is
    one line naming the problem (the usage is in ``--help``), exit code 2; ``--version``; defaults in
    ``--help``."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument("--version", action=_Version, help="print the versions of cssformer, torch and "
                          "triton, and exit")

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def version_line() -> str:
    """``cssformer 0.1.0 (torch 2.14.1, triton 3.8.0)``, read from the installed packages' metadata (no
    import of torch)."""
    from importlib import metadata

    from cssformer import __version__

    found = []
    for package in ("torch", "triton"):
        try:
            found.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            found.append(f"{package} not installed")
    return f"cssformer {__version__} ({', '.join(found)})"


class _Version(argparse.Action):
    """``--version``: prints :func:`version_line` and exits 0 (the line is made only when asked)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_line())
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="cssformer", description="CSSFormer semantic segmentation toolkit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_line) in COMMANDS.items():
        sub.add_parser(name, help=help_line, add_help=False)
    return parser


def _run(name: str, argv: list[str]) -> int:
    module = importlib.import_module(COMMANDS[name][0])
    parser = Parser(prog=f"cssformer {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return int(module.run(args) or 0)
    except UsageError as err:
        return _fail(name, str(err))
    except KeyboardInterrupt:
        print(f"cssformer {name}: interrupted (files already written are complete; an interrupted write "
              "leaves the previous file)", file=sys.stderr)
        return 130
    except OSError as err:  # a file system refusing a write: read-only, full, a file in the way
        where = f" {err.filename}" if err.filename else ""
        return _fail(name, f"cannot access{where}: {err.strerror or err}")
    except MemoryError:
        return _fail(name, "out of memory: expected smaller sizes (crop, image, batch)")
    except RuntimeError as err:  # torch's allocators (CPU and CUDA) raise RuntimeError subclasses
        text = str(err)
        if "out of memory" not in text and "allocate" not in text:
            raise
        return _fail(name, f"out of memory ({text.strip().splitlines()[0][:160]}): expected smaller sizes "
                           "(crop, image, batch)")


def _fail(name: str, message: str) -> int:
    lines = message.strip().splitlines() or ["failed"]
    print(f"cssformer {name}: error: {lines[0]}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        build_parser().print_help()
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        build_parser().parse_args(argv[:1])  # prints the usage error and exits 2
    return _run(argv[0], argv[1:])


def train_main(argv: list[str] | None = None) -> int:
    """``cssformer-train``: the same as ``cssformer train``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return _run("train", argv)


if __name__ == "__main__":  # `python -m cssformer.cli ...`, e.g. under torchrun
    sys.exit(main())
