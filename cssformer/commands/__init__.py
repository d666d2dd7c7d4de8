"""Sub-commands of the ``cssformer`` CLI (see ``cssformer/cli.py``)."""
