"""``cssformer config [NAME_OR_FILE] [flags] [--set KEY=VALUE ...]``: the training config that
``cssformer-train`` would run with, resolved (built-in defaults < the dataset's profile < the config file
< flags), as YAML with each value's source in a comment. The output is itself a config file: fed back
with ``--config`` it resolves to the same training config. ``cssformer-train --print-config`` prints the
same."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cssformer.commands.train import add_config_arguments

    parser.add_argument("config", nargs="?", metavar="NAME_OR_FILE",
                        help="a YAML config file or the name of a shipped config (`cssformer configs`); "
                        "none: the default run (cssformer-nano on synthetic data)")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from cssformer.commands.train import resolved

    cfg, sources, _ = resolved(args, args.config)
    print(resolved_yaml(cfg, sources), end="")
    return 0


def resolved_yaml(cfg: dict, sources: dict[str, str]) -> str:
    """``cfg`` as YAML in its key order, a ``# source`` comment on each key's first line."""
    import yaml

    lines = ["# resolved training config: defaults < dataset profile < config file < flags (the comment",
             "# after each key says which); a config file itself: cssformer-train --config THIS_FILE"]
    for key, value in cfg.items():
        flow = None if isinstance(value, (list, tuple, dict)) and value else False  # lists: [a, b]
        text = yaml.safe_dump({key: value}, sort_keys=False, default_flow_style=flow, width=10_000).rstrip("\n")
        first, *rest = text.split("\n")
        lines.append(f"{first}  # {sources.get(key, 'resolved')}")
        for line in rest:  # a section's keys (test: mode, crop, ...) get their own source where known
            sub = line.strip().split(":")[0]
            known = isinstance(value, dict) and line.startswith("  ") and f"{key}.{sub}" in sources
            lines.append(f"{line}  # {sources[f'{key}.{sub}']}" if known else line)
    return "\n".join(lines) + "\n"
