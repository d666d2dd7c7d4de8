"""Shipped training configs: one YAML file per row of the paper's tables (dataset x backbone) and per
ablation row, installed with the package. ``cssformer configs`` lists them; ``cssformer-train --config
NAME`` takes one by name from any directory.

Each file is flat (no inheritance): every training key it sets, ``sources`` (which values come from
the paper, which from mmsegmentation's Swin schedules) and ``reference`` (the paper's rows and numbers
it reproduces, the Swin release file it starts from)."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from cssformer.errors import UsageError

__all__ = ["list_configs", "config_path", "load_config"]


def _folder() -> Path:
    return Path(str(resources.files(__name__)))


def list_configs() -> list[str]:
    """Names of the shipped configs (file names without ``.yaml``), sorted."""
    return sorted(p.stem for p in _folder().glob("*.yaml"))


def config_path(name_or_path: str | Path) -> Path:
    """An existing file as it is; otherwise the shipped config of that name (``.yaml`` optional)."""
    path = Path(name_or_path)
    if path.exists():  # a file, or something in the way that load_yaml names (a folder, ...)
        return path
    name = path.name[: -len(".yaml")] if path.name.endswith(".yaml") else path.name
    if str(path) == path.name and name in list_configs():
        return _folder() / f"{name}.yaml"
    raise UsageError(f"config file not found: {name_or_path} (neither a file nor a shipped config; "
                     "`cssformer configs` lists the shipped ones)")


def load_config(name_or_path: str | Path) -> dict:
    """The keys of a config file or shipped config, checked (unknown keys are an error)."""
    from cssformer.engine.config import load_yaml

    return load_yaml(config_path(name_or_path))
