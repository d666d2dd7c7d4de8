"""The locality report (bench/locality_report.py) and the input distributions (bench/msda_inputs.py):
layouts partition the rows, corner rows and 128-byte lines on hand-made cases, the LRU model, and the
report's claim on a small pyramid (one head per program over 2-D tiles touches fewer lines per gather
than today's rows layout on local inputs)."""
import argparse
import json

import pytest
import torch

import bench_scripts

from cssformer_kernels.shapes import ProblemShape

SMALL = ProblemShape(N=2, levels=((16, 12), (8, 6), (4, 3)), M=4, D=32, P=4)


@pytest.fixture(scope="module")
def loc():
    return bench_scripts.load("locality_report")


@pytest.fixture(scope="module")
def inputs(loc):
    return loc.msda_inputs


@pytest.mark.parametrize("name", ["rows", "strip", "tile", "tile2h"])
def test_layouts_partition_the_rows(loc, name):
    layout = loc.Layout(name, SMALL, block_r=24, strip=20, tile=(4, 4))
    seen = []
    for pid in range(layout.count):
        n, q, m = layout.rows(pid)
        if name != "rows":
            heads = 2 if name == "tile2h" else 1
            assert len(set(m.tolist())) == heads and len(set(n.tolist())) == 1  # one (two) head(s) per program
        seen += ((n * SMALL.S + q) * SMALL.M + m).tolist()
    assert sorted(seen) == list(range(SMALL.N * SMALL.S * SMALL.M))


def test_tile_layout_needs_pyramid_queries(loc):
    with pytest.raises(ValueError, match="Q == S"):
        loc.Layout("tile", ProblemShape(N=1, levels=((4, 4),), Q=10))


def test_corner_rows_by_hand(loc):
    shape = ProblemShape(N=1, levels=((4, 5), (2, 2)), M=2, D=32, P=1)
    n, q, m = torch.tensor([0]), torch.tensor([3]), torch.tensor([1])
    loc_ = torch.zeros(1, 2, 1, 2)
    loc_[0, 0, 0] = torch.tensor([(1 + 0.5) / 5, (2 + 0.5) / 4])  # level 0: on the centre of pixel (x=1, y=2)
    loc_[0, 1, 0] = torch.tensor([1.2, 0.4])                       # level 1: x_im = 1.9: x0 = 1 in, x0 + 1 out
    steps = loc.corner_rows(shape, n, q, m, loc_)
    S, M = shape.S, shape.M
    level0 = sorted(((y * 5 + x) * M + 1) for x, y in ((1, 2), (2, 2), (1, 3), (2, 3)))
    assert sorted(steps[0].tolist()) == level0
    # level 1 starts at 20; y_im = 0.3: rows y = 0, 1; x = 1 only.
    assert sorted(steps[1].tolist()) == sorted(((20 + y * 2 + 1) * M + 1) for y in (0, 1))
    assert all(0 <= r < S * M for s in steps for r in s.tolist())


def test_lines(loc):
    rows = torch.tensor([0, 1, 2, 3])
    assert loc.lines_of(rows, 128).tolist() == [0, 1, 2, 3]                 # fp32 D=32: a line per row
    assert torch.unique(loc.lines_of(rows, 64)).tolist() == [0, 1]           # bf16 D=32: two rows a line
    assert loc.lines_of(torch.tensor([1]), 192).tolist() == [1, 2]           # 192..383: lines 1 and 2


def test_lru_model(loc):
    program = [torch.tensor([1, 2]), torch.tensor([1, 3])]
    assert loc.simulate_sm([program], resident=1, capacity_lines=2) == 3
    assert loc.simulate_sm([program], resident=1, capacity_lines=1) == 4  # 2 evicts 1, 1 evicts 2, ...
    other = [torch.tensor([1]), torch.tensor([3])]
    assert loc.simulate_sm([program, other], resident=2, capacity_lines=8) == 3  # shared lines hit


def test_inputs_local_at_the_pyramid_positions(inputs):
    ref, offsets, logits = inputs.local_fused(SMALL, seed=0)
    assert ref.shape == (SMALL.N, SMALL.S, 2) and offsets.shape == (SMALL.N, SMALL.S, SMALL.M, SMALL.L, SMALL.P, 2)
    assert torch.allclose(ref[0, 0], torch.tensor([0.5 / 12, 0.5 / 16]))        # pixel (0, 0) of level 0
    assert torch.allclose(ref[0, 16 * 12], torch.tensor([0.5 / 6, 0.5 / 8]))    # first pixel of level 1
    assert 1.8 < offsets.std().item() < 2.2
    (layer, locs), = inputs.locations("local", "small", SMALL, seed=0)
    assert layer is None and locs.shape == offsets.shape
    with pytest.raises(ValueError, match="Q == S"):
        inputs.local_fused(ProblemShape(N=1, levels=((4, 4),), Q=3))


def test_tiles_touch_fewer_lines_than_rows_on_local_inputs(loc, inputs):
    args = argparse.Namespace(sms=8, resident=2, l1_kib=16, sm_samples=2, waves=2)
    (_, locs), = inputs.locations("local", "small", SMALL, seed=0)
    li = loc.Inputs("local", None, locs)
    rows = loc.measure(loc.Layout("rows", SMALL, block_r=16), li, "fp32", args)
    tile = loc.measure(loc.Layout("tile", SMALL, tile=(4, 4)), li, "fp32", args)
    assert rows["programs_sampled"] == tile["programs_sampled"] == 2 * 2 * 2  # SMs x waves x resident
    assert 0 < tile["lines_per_gather"] < rows["lines_per_gather"] * 0.7
    assert 0 < tile["l2_bytes_per_gather"] < rows["l2_bytes_per_gather"]
    assert rows["gathers_per_program"] <= 16 * SMALL.L * SMALL.P * 4


def test_cli_json(loc, tmp_path, monkeypatch):
    monkeypatch.setitem(loc.benchlib.MODEL_PRESETS, "small", SMALL)  # a tiny preset for the CLI
    out = tmp_path / "loc.json"
    assert loc.main(["--shape", "small", "--inputs", "uniform", "local", "--dtype", "fp32", "--layout", "rows", "tile",
                     "--sm-samples", "1", "--waves", "1", "--json", str(out), "--markdown", str(tmp_path / "t.md")]) == 0
    result = json.loads(out.read_text())
    assert {(r["layout"], r["inputs"]) for r in result["rows"]} == {(a, b) for a in ("rows", "tile")
                                                                      for b in ("uniform", "local")}
    for r in result["rows"]:
        for k in ("layout", "inputs", "shape", "dtype", "gathers_per_program", "lines_per_gather", "l2_bytes_per_gather"):
            assert k in r
    assert {(r["inputs"], r["layout"]) for r in result["ratios"]} == {("uniform", "tile"), ("local", "tile")}
    table = (tmp_path / "t.md").read_text().splitlines()
    assert len(table) == 2 + 4 and table[0].startswith("| shape | inputs |")
