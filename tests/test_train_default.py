"""The one-command run: `cssformer-train` with no arguments, against the mIoU the README states and the
10-minute budget on 2 cores.
Slow (minutes): `pytest -m slow tests/test_train_default.py`."""
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _stated_miou() -> float:
    text = (ROOT / "README.md").read_text()
    found = re.search(r"`cssformer-train` .*?mIoU above \*\*([\d.]+)\*\*", text, re.S)
    assert found, "README does not state the mIoU the default run reaches ('mIoU above **X**')"
    return float(found.group(1))


@pytest.mark.slow
def test_default_run_learns_within_ten_minutes(tmp_path):
    script = Path(sys.executable).parent / "cssformer-train"
    cmd = [str(script)] if script.exists() else [sys.executable, "-c", "from cssformer.cli import train_main; train_main()"]
    start, cpu = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    wall = time.monotonic() - start
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime
    assert proc.returncode == 0, proc.stderr[-3000:]
    work = tmp_path / "work_dirs" / "cssformer-nano_synthetic"
    assert (work / "config.yaml").is_file() and (work / "best.pth").is_file()
    assert (work / "curves.png").is_file(), "the default run leaves no curves PNG (is matplotlib installed?)"
    evals = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    final = [r for r in evals if r["type"] == "eval"][-1]
    print(f"default run: {wall:.0f} s wall, {cpu_s:.0f} s CPU, final mIoU {final['mIoU']:.2f}")
    assert "final mIoU" in proc.stdout
    assert final["mIoU"] > _stated_miou()
    # "<= 10 minutes on a 2-core CPU", judged by the CPU time the run used (at most 2 x 600 core-seconds)
    # rather than by wall time, which other jobs on the machine stretch (measured: 113 s wall and 198 s of
    # CPU on a quiet machine, 898 s wall with three other jobs on the same two cores).
    assert cpu_s <= 2 * 600, (f"the default run used {cpu_s:.0f} s of CPU time (> 2 cores x 10 min); "
                              f"{wall:.0f} s wall, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
