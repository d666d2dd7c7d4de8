"""Per-GPU autotuning of the sampling kernels, persisted across processes.

Each kernel has a small config space (rows per program, points per step, warps, pipeline stages, work
layout, bytes of a value row per thread). A problem is keyed by what changes the best choice (dtypes,
heads, head dim, levels, points, fused or not, whether the queries are the pyramid positions, and a
coarse bucket of the row count). The first launch of a new key on a GPU times every config with
``triton.testing.do_bench`` and keeps the fastest; choices are saved in a JSON file under the user's
cache folder, one section per (GPU name, Triton version) and per kernel version, so later processes
reuse them. ``cssformer autotune`` fills the file ahead of time.

No tuning (the default config is used) under the Triton interpreter (where several configs cannot be
benchmarked), during CUDA-graph capture or torch.compile tracing, or with ``CSSFORMER_AUTOTUNE=0``.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional

import torch

# Kernel v4 configs: rows per program (BLOCK_R), points per step (P_BLOCK), warps, pipeline stages, the work
# layout (LAYOUT: "rows", "strip" or "tile", see ``launch.LAYOUTS``), D_SPLIT (each thread owns D_SPLIT
# 16-byte pieces of a value row) and TILE_W (width of a "tile" layout's query tile; BLOCK_R / TILE_W rows).
# The untuned choice stays the layout of kernel v3 ("rows") until a GPU run shows another one faster.
DEFAULT_CONFIG = {"BLOCK_R": 32, "P_BLOCK": 4, "num_warps": 4, "num_stages": 1, "LAYOUT": "rows", "D_SPLIT": 2}
# Under the interpreter the cost is per program and per op, not per row: few, wide programs.
INTERPRETER_CONFIG = {"BLOCK_R": 64, "P_BLOCK": 4, "num_warps": 1, "num_stages": 1, "LAYOUT": "rows", "D_SPLIT": 1}


def _config(block_r, p_block, warps, stages, layout="rows", d_split=1, tile_w=None):
    """A config dict; the v3 kind (rows, ``D_SPLIT=1``) keeps v3's four keys (``launch.block_meta`` reads
    missing keys as that kind), so its name stays ``BLOCK_RxP_BLOCKxwarpsxstages``."""
    config = {"BLOCK_R": block_r, "P_BLOCK": p_block, "num_warps": warps, "num_stages": stages}
    if layout != "rows" or d_split != 1:
        config.update(LAYOUT=layout, D_SPLIT=d_split)
    if layout == "tile":
        config["TILE_W"] = tile_w or 8
    return config


# Kernel v3's seven configs (layout "rows", D_SPLIT=1: more points per step put more independent corner
# loads in flight; a stage count > 1 lets Triton prefetch the next step's loads), then the v4 candidates:
# two bytes-per-thread choices of "rows", head strips and 2-D tiles (8 x 8 and 4 x 8 queries). Few enough
# to tune at first use in seconds.
CONFIG_SPACE = [
    _config(*c) for c in (
        (32, 1, 4, 1), (16, 4, 4, 1), (32, 2, 4, 1), (32, 4, 4, 1), (32, 4, 8, 1), (64, 2, 8, 1), (64, 4, 8, 1),
        (32, 4, 4, 1, "rows", 2), (64, 2, 4, 1, "rows", 2),
        (32, 4, 4, 1, "strip", 2), (64, 4, 8, 1, "strip", 2),
        (64, 2, 4, 1, "tile", 2, 8), (64, 4, 8, 1, "tile", 2, 8), (32, 4, 4, 1, "tile", 2, 8),
    )
]

_memory: dict = {}
_lock = threading.Lock()
_session: Optional[dict] = None  # set by tuning_session(): {"force": bool, "records": list}


def cache_path() -> Path:
    """``$CSSFORMER_CACHE_DIR/autotune.json``, else ``$XDG_CACHE_HOME/cssformer/...``, else ``~/.cache/cssformer/...``."""
    root = os.environ.get("CSSFORMER_CACHE_DIR")
    if root:
        return Path(root) / "autotune.json"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "cssformer" / "autotune.json"


def gpu_key(device: torch.device) -> str:
    import triton

    return f"{torch.cuda.get_device_name(device)} | triton {triton.__version__}"


def problem_key(*, rows: int, **params) -> str:
    """A stable string for the parameters that matter; the row count enters as a power-of-4 bucket."""
    bucket = 4 ** max(0, math.ceil(math.log(max(rows, 1), 4)))
    parts = [f"{k}={str(v).replace('torch.', '')}" for k, v in sorted(params.items())]
    return ",".join(parts + [f"rows<={bucket}"])


def tuning_enabled(device: torch.device) -> bool:
    if device.type != "cuda" or os.environ.get("CSSFORMER_AUTOTUNE", "1") == "0":
        return False
    if torch.compiler.is_compiling() or torch.cuda.is_current_stream_capturing():
        return False
    return True


def _load() -> dict:
    try:
        return json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}


def _save(gpu: str, kernel: str, key: str, config: dict) -> None:
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _load()  # merge with what other processes wrote since
    data.setdefault(gpu, {}).setdefault(kernel, {})[key] = config
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".autotune-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)  # atomic: readers see the old or the new file, never half of one


def lookup(kernel: str, version: int, key: str, device: torch.device) -> Optional[dict]:
    name = f"{kernel}@v{version}"
    gpu = gpu_key(device)
    with _lock:
        # The file is read once per key and process; a miss is remembered too (as None), so launches of
        # an untuned key (tuning off, or during capture) do not re-read the file every time.
        if (gpu, name, key) not in _memory:
            _memory[(gpu, name, key)] = _load().get(gpu, {}).get(name, {}).get(key)
        return _memory[(gpu, name, key)]


def config_space() -> list[dict]:
    """``CONFIG_SPACE``, or the configs listed in ``CSSFORMER_AUTOTUNE_CONFIGS`` as
    ``BLOCK_R x P_BLOCK x warps x stages [x LAYOUT [x D_SPLIT [x TILE_W]]]`` items (e.g.
    ``32x4x4x1,64x2x4x1xtilex2x8``; without a layout: "rows", ``D_SPLIT=1``) to tune faster."""
    from .launch import LAYOUTS

    text = os.environ.get("CSSFORMER_AUTOTUNE_CONFIGS", "").strip()
    if not text:
        return CONFIG_SPACE
    configs = []
    for item in text.split(","):
        parts = item.strip().split("x")
        numbers = parts[:4] + parts[5:]
        ok = 4 <= len(parts) <= 7 and all(p.isdigit() and int(p) > 0 for p in numbers)
        if ok and len(parts) > 4:
            ok = parts[4] in LAYOUTS
        if not ok:
            raise ValueError(f"CSSFORMER_AUTOTUNE_CONFIGS: got item {item!r}, expected "
                             "BLOCK_RxP_BLOCKxwarpsxstages[xLAYOUT[xD_SPLIT[xTILE_W]]], e.g. 32x4x4x1 or "
                             f"64x2x4x1xtilex2x8 (LAYOUT one of {', '.join(LAYOUTS)})")
        configs.append(_config(*(int(p) for p in parts[:4]), *([parts[4]] if len(parts) > 4 else []),
                               *(int(p) for p in parts[5:])))
    return configs


def benchmark(launch: Callable[[dict], None], reset: Optional[Callable[[], None]] = None,
              configs=None) -> list[tuple[dict, float]]:
    """Median time in ms of each config (``reset`` runs before every launch, e.g. to zero atomics'
    outputs, and is timed with it: the same constant for every config). Configs that fail to compile
    or launch (e.g. out of resources) get ``inf``."""
    from triton.testing import do_bench

    results = []
    for config in configs or config_space():
        def run(config=config):
            if reset is not None:
                reset()
            launch(config)
        try:
            ms = do_bench(run, warmup=5, rep=25, return_mode="median")
        except Exception as err:  # noqa: BLE001 - a config that does not fit this GPU is skipped, not fatal
            warnings.warn(f"autotune: config {config} failed and is skipped: {type(err).__name__}: {err}")
            ms = float("inf")
        results.append((config, ms))
    return results


def tune(kernel: str, version: int, key: str, launch, device: torch.device, reset=None) -> list[tuple[dict, float]]:
    """Benchmark every config, persist the fastest, return all timings."""
    results = benchmark(launch, reset)
    best = min(results, key=lambda r: r[1])[0]
    if all(math.isinf(ms) for _, ms in results):
        raise RuntimeError(f"autotune: no config of {kernel} could run for {key}")
    gpu = gpu_key(device)
    with _lock:
        _memory[(gpu, f"{kernel}@v{version}", key)] = best
    _save(gpu, f"{kernel}@v{version}", key, best)
    return results


@contextmanager
def tuning_session(force: bool = False):
    """Within it, every kernel launch records what it chose (``(kernel, key, timings or None, config)``,
    timings ``None`` for a cached choice) in the yielded list; ``force`` re-tunes cached keys."""
    global _session
    previous, _session = _session, {"force": force, "records": []}
    try:
        yield _session["records"]
    finally:
        _session = previous


def choose(kernel: str, version: int, key: str, launch, device: torch.device, reset=None) -> dict:
    """The config to launch with: cached, else tuned now (on CUDA), else the default."""
    if device.type != "cuda":
        return INTERPRETER_CONFIG
    session = _session
    hit = None if session is not None and session["force"] else lookup(kernel, version, key, device)
    if hit is not None:
        if session is not None:
            session["records"].append((kernel, key, None, hit))
        return hit
    if not tuning_enabled(device):
        return DEFAULT_CONFIG
    results = tune(kernel, version, key, launch, device, reset)
    best = min(results, key=lambda r: r[1])[0]
    if session is not None:
        session["records"].append((kernel, key, results, best))
    return best
