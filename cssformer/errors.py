"""Errors shared by the data, engine and command layers."""


class UsageError(Exception):
    """Bad input from the user (a file, a key, a value): the command prints the message and exits 2."""


def require(module: str, extra: str):
    """Imports an optional dependency, or raises a one-line :class:`UsageError` naming the extra that
    installs it (``pip install "cssformer[EXTRA]"``)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(f"{module.split('.')[0]} is not installed: pip install \"cssformer[{extra}]\"") from None
