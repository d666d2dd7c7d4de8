"""What every benchmark script here records beside its rows: the device by name, the versions, the
commit and the command line, and a JSON file named after the device and the time."""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path

import torch


def device_name(device: torch.device) -> str:
    """``NVIDIA H200``, or the CPU's model name from ``/proc/cpuinfo``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    try:
        git = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return git.stdout.strip() if git.returncode == 0 else None


def environment(device: torch.device, **extra) -> dict:
    """Device, versions, commit, UTC date and command line, plus ``extra``."""
    return dict(device=device_name(device), device_type=device.type, torch=torch.__version__,
                triton=package_version("triton"), timm=package_version("timm"), cuda=torch.version.cuda,
                cssformer=package_version("cssformer"), python=platform.python_version(),
                platform=platform.platform(), cpu_count=os.cpu_count(), git_commit=git_commit(),
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                command=shlex.join([sys.executable, *sys.argv]),
                triton_interpret=os.environ.get("TRITON_INTERPRET"), **extra)


def default_json_path(prefix: str, device: str) -> Path:
    """``bench_results/<prefix>-<device slug>-<UTC time>.json``."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", device).strip("-").lower()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("bench_results") / f"{prefix}-{slug}-{stamp}.json"


def write_json(path: Path, **content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2) + "\n")
    return path


# The sampling problem of cssformer-swin-t at 512x512 (both deformable layers, MSFE and CSF: one query
# per pyramid token, Q == S; Swin strides 4..32; d_model 256 over 8 heads; 16 points), at the batch of
# a training step (2) and of inference (1). Under bf16 autocast the model passes bf16 value, offsets
# and logits with fp32 reference points (MODEL_PRESETS: reference points stay fp32 in 16-bit rows).
def _model_presets() -> dict:
    from cssformer_kernels.shapes import ProblemShape

    levels = ((128, 128), (64, 64), (32, 32), (16, 16))
    return {"cssformer": ProblemShape(N=2, levels=levels, M=8, D=32, P=16),
            "cssformer_b1": ProblemShape(N=1, levels=levels, M=8, D=32, P=16)}


MODEL_PRESETS = _model_presets()


def presets() -> dict:
    """The kernels' named shapes (``cssformer_kernels.shapes.PRESETS``) plus :data:`MODEL_PRESETS`."""
    from cssformer_kernels.shapes import PRESETS

    return {**PRESETS, **MODEL_PRESETS}


def ref_dtype(shape_name: str, dtype: torch.dtype) -> torch.dtype:
    """The reference points' dtype in a row: fp32 at the model's shapes (as the model passes them under
    autocast), else the row's dtype."""
    return torch.float32 if shape_name in MODEL_PRESETS and dtype != torch.float64 else dtype


def replace_marked(path: Path, name: str, text: str) -> None:
    """Replace what lies between the lines ``<!-- name:begin -->`` and ``<!-- name:end -->`` of a doc."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    doc = Path(path).read_text()
    if doc.count(begin) != 1 or doc.count(end) != 1 or doc.index(begin) > doc.index(end):
        raise ValueError(f"{path}: expected one '{begin}' line and one '{end}' line after it")
    head, rest = doc.split(begin, 1)
    _, tail = rest.split(end, 1)
    Path(path).write_text(f"{head}{begin}\n{text.strip()}\n{end}{tail}")
