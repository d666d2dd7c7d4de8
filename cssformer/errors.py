"""Errors shared by the data, engine and command layers."""


class UsageError(Exception):
    """Bad input from the user (a file, a key, a value): the command prints the message and exits 2."""
