"""The one size check: a size is an int or (H, W), each at least ``MIN_SIZE`` and at most ``MAX_SIZE``.
The training size is called ``crop_size`` in configs and on the command line; ``build_model`` calls the
same number ``img_size`` (the size the backbone's position tables are built for). At run time a size is
the ``(h, w)`` tuple this returns; configs and checkpoints hold it as ``[h, w]``. A checkpoint stores
the training size once, as ``build_args['img_size']`` (``engine/model_io.crop_size`` reads it)."""
from __future__ import annotations

from numbers import Integral
from typing import Any

MIN_SIZE = 32      # the backbone downsamples by 32
MAX_SIZE = 4096    # beyond this a single image no longer fits in memory on any card we target


def ceil_div(n, d):
    """``ceil(n / d)`` for ``n >= 0``, ``d > 0``: ints, or the symbolic sizes of a traced graph. Written
    ``(n + d - 1) // d``, never ``-(-n // d)``: the ONNX exporter writes ``//`` as integer ``Div``, which
    truncates, so a negative floor division comes out wrong in an exported graph."""
    return (n + d - 1) // d


def round_up(n, multiple):
    """``n`` rounded up to a multiple of ``multiple`` (see :func:`ceil_div`)."""
    return ceil_div(n, multiple) * multiple


def as_hw(value: Any, name: str, lo: int = MIN_SIZE, hi: int = MAX_SIZE) -> tuple[int, int]:
    """``value`` (an int or two ints) as ``(h, w)``; anything else raises ``ValueError`` naming ``name``."""
    def is_int(v):
        return isinstance(v, Integral) and not isinstance(v, bool)

    hw = [value, value] if is_int(value) else value
    try:
        hw = list(hw)
        ok = len(hw) == 2 and all(is_int(v) for v in hw)
    except TypeError:
        ok = False
    if not ok or not all(lo <= v <= hi for v in hw):
        raise ValueError(f"{name}: got {value!r}, expected an int or [h, w] of {lo}..{hi}")
    return int(hw[0]), int(hw[1])
