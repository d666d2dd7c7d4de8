"""How a model runs, shared by training, evaluation, prediction, the benchmarks and autotune: the
precision (config key ``amp``, ``--amp``, bench ``--precision``, autotune ``--dtype``: one vocabulary,
one :func:`autocast`) and ``torch.compile`` (``compile``). Names only at import time; torch is imported
when used."""
from __future__ import annotations

PRECISIONS = ("fp32", "bf16", "fp16")  # fp32: no autocast; bf16 / fp16: autocast to that dtype
PRECISION_ALIASES = {"none": "fp32"}    # the old spelling of ``amp`` (no mixed precision)
AMP_CHOICES = PRECISIONS + tuple(PRECISION_ALIASES)  # every spelling accepted
# "inductor" is what a user wants for speed; "aot_eager" / "eager" only trace (cheap: checks that the
# model compiles, e.g. on a CPU without a C++ toolchain, and find graph breaks)
COMPILE_BACKENDS = ("none", "inductor", "aot_eager", "eager")


def precision(name: str) -> str:
    """``name`` in the one vocabulary (:data:`PRECISIONS`; ``"none"`` is ``"fp32"``); ``ValueError``
    naming the choices otherwise."""
    name = PRECISION_ALIASES.get(name, name)
    if name not in PRECISIONS:
        raise ValueError(f"amp must be fp32, bf16 or fp16 (none: fp32), got {name!r}")
    return name


def precision_arg(text: str) -> str:
    """An argparse type (with ``choices=PRECISIONS``): the old spelling read as the current one; an
    unknown name is left to argparse's "invalid choice" message."""
    return PRECISION_ALIASES.get(text, text)


def amp_dtype(name: str):
    """``"fp32"`` (or ``"none"``) -> ``None``, ``"bf16"`` -> ``torch.bfloat16``, ``"fp16"`` -> ``torch.float16``."""
    import torch

    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision(name)]


def autocast(device, name_or_dtype):
    """``torch.autocast`` for ``device`` in that precision (a name, a dtype or ``None``; a no-op context
    for fp32): the one place that enters autocast."""
    import torch

    dtype = amp_dtype(name_or_dtype) if isinstance(name_or_dtype, str) else name_or_dtype
    dtype = None if dtype == torch.float32 else dtype
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None)


def set_tf32(enabled: bool) -> None:
    """The ``tf32`` switch: ``True`` lets fp32 matmuls (and convolutions) run on TF32 tensor cores (CUDA,
    Ampere and newer: about 10 mantissa bits in the products, fp32 sums, several times the fp32 rate).
    ``False`` (the config default) keeps PyTorch's defaults: matmuls in exact fp32
    (``torch.backends.cuda.matmul.allow_tf32 = False``), cuDNN convolutions as PyTorch has them (TF32
    allowed by default). No effect inside bf16 / fp16 autocast regions."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
    if enabled:
        torch.backends.cudnn.allow_tf32 = True


def compiled(model, backend: str | None):
    """``model`` as it is (``None`` / ``"none"``) or wrapped by ``torch.compile(backend=...)``; the wrapper
    shares the parameters and forwards attribute access (``num_classes``, ...) to ``model``.

    Static shapes (``dynamic=False``): a new input size compiles a new graph. Training sees one crop size;
    symbolic shapes through Swin's padding and windowing made dynamo's shape solver run for minutes."""
    if backend in (None, "none"):
        return model
    import torch

    return torch.compile(model, backend=backend, dynamic=False)
