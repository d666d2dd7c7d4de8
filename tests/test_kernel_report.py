"""The static cost report (bench/kernel_report.py): one forward and one backward variant compiled for
sm_90 through the report's own code (in a process without TRITON_INTERPRET), no spills, and the SASS
reading it rests on (loop detection, memory-op widths) on hand-made listings."""
import json
import os
import subprocess
import sys

import pytest

import bench_scripts

SCRIPT = bench_scripts.BENCH / "kernel_report.py"


@pytest.fixture(scope="module")
def report():
    return bench_scripts.load("kernel_report")


def test_compiles_forward_and_backward_without_spills(tmp_path):
    # The model's call (fused, bf16 value/offsets/logits, fp32 reference points) forward at the default
    # config, and the fp32 canonical backward at the default config: two compiles, ~10-30 s.
    out = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    rows = []
    for kernel, form, dtype in (("forward", "fused", "bf16"), ("backward", "canonical", "fp32")):
        proc = subprocess.run([sys.executable, str(SCRIPT), "--arch", "90", "--shape", "cssformer", "--kernel", kernel,
                               "--form", form, "--dtype", dtype, "--config", "default", "--quiet", "--json", str(out)],
                              env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        result = json.loads(out.read_text())
        assert result["triton"] and len(result["rows"]) == 1
        rows += result["rows"]
    for r in rows:
        where = f"{r['kernel']} {r['form']} {r['dtype']} {r['config']}"
        assert r["spill_bytes"] == 0, f"{where} spills {r['spill_bytes']} bytes (ptxas -v)"
        assert r["default"] and r["arch"] == "sm_90" and 0 < r["registers"] <= 255, r
        assert r["loop_instructions"] > 0 and r["instructions_per_gather"] > 0, r
        # The launch specialisation: pointers and sizes divisible by 16 carry tt.divisibility (S = 21760,
        # P = 16, D = 32 at this shape; M = 8 does not), else the gathers would be scalar loads.
        assert {"value_ptr", "S", "D", "P"} <= set(r["divisible_by_16"]) and "M" not in r["divisible_by_16"], r
        loads = r["loop_global_memory"]["load"]
        assert loads.get("128", 0) >= 4, f"{where}: the corner rows should be 16-byte loads, got {loads}"
        # The loop's gathers move at most what its loads move: gathers x D x itemsize <= load bytes.
        threads = 32 * r["num_warps"]
        load_bytes = sum(int(bits) // 8 * n * threads for bits, n in loads.items())
        itemsize = {"fp32": 4, "bf16": 2, "fp16": 2}[r["dtypes"]["value"]]
        assert r["gathers_per_iteration"] * 32 * itemsize <= load_bytes, r
    # The backward adds every gathered corner element into grad_value once: fp32 atomic lanes per
    # iteration = gathers x D (whatever the vector width, e.g. 128-bit F32x4 on sm_90).
    backward = rows[1]
    atomics = backward["loop_global_memory"]["atomic"]
    lanes = sum(int(bits) // 32 * n for bits, n in atomics.items()) * 32 * backward["num_warps"]
    assert lanes == backward["gathers_per_iteration"] * 32, atomics


LISTING = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_0:
        /*0010*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
.L_x_1:
        /*0020*/                   LDG.E.U16 R8, desc[UR4][R2.64] ;
        /*0030*/                   REDG.E.ADD.F32.FTZ.RN.STRONG.GPU desc[UR4][R2.64], R9 ;
        /*0038*/                   REDG.E.ADD.F32x4.FTZ.RN.STRONG.GPU desc[UR4][R2.64], R12 ;
        /*0040*/              @!P1 BRA `(.L_x_1) ;
        /*0050*/                   NOP ;
        /*0060*/              @P0 BRA `(.L_x_0) ;
        /*0070*/                   STG.E.64 desc[UR4][R2.64], R4 ;
        /*0080*/                   EXIT ;
"""


def test_inner_loop_and_widths(report, monkeypatch):
    class Proc:
        returncode, stdout, stderr = 0, LISTING, ""

    monkeypatch.setattr(report.subprocess, "run", lambda *a, **k: Proc())
    monkeypatch.setattr(report, "tool", lambda name: name)
    instrs = report.disassemble(b"")
    assert [i[1] for i in instrs][:3] == ["MOV", "LDG.E.128", "LDG.E.U16"]
    loop = report.inner_loop(instrs)
    assert [hex(i[0]) for i in loop] == ["0x20", "0x30", "0x38", "0x40"]  # the inner of the two nested loops
    counts = report.memory_counts(instrs)
    assert counts == {"load": {"16": 1, "128": 1}, "store": {"64": 1}, "atomic": {"32": 1, "128": 1}}
    assert report.memory_op("REDG.E.ADD.F32x4.FTZ.RN") == ("atomic", 128)
    assert report.memory_op("IMAD.WIDE") is None


def test_config_names_and_selection(report):
    assert report.config_name({"BLOCK_R": 32, "P_BLOCK": 4, "num_warps": 4, "num_stages": 1}) == "32x4x4x1"
    assert report.config_name({"BLOCK_R": 8, "P_BLOCK": 4, "num_warps": 4, "num_stages": 1, "LAYOUT": "tile"}) == \
        "8x4x4x1,LAYOUT=tile"
    args = report.parse_args(["--arch", "90", "80", "--kernel", "forward", "--form", "fused", "--dtype", "bf16",
                              "--shape", "cssformer"])
    jobs = report.make_jobs(args)
    sm90 = [j for j in jobs if j.arch == 90]
    sm80 = [j for j in jobs if j.arch == 80]
    assert len(sm90) == len(report.autotune_configs()) and len(sm80) == 1 and sm80[0].default
    assert sum(j.default for j in sm90) == 1
    args = report.parse_args(["--arch", "80", "--shape", "detr_enc", "cssformer", "--config", "auto"])
    assert {j.case.shape_name for j in report.make_jobs(args)} == {"cssformer"}  # sm_80: the model's shape only
    names = [report.config_name(c) for c in report.autotune_configs()[:2]]
    args = report.parse_args(["--arch", "90", "--kernel", "backward", "--shape", "cssformer", "--config", ";".join(names)])
    assert {report.config_name(j.config) for j in report.make_jobs(args)} == set(names)
    args = report.parse_args(["--arch", "90", "--shape", "cssformer", "--model-configs", names[0]])
    default = report.config_name(report.autotune_default(None))
    assert {report.config_name(j.config) for j in report.make_jobs(args)} == {names[0], default}
    with pytest.raises(SystemExit):
        report.parse_args(["--jobs", "0"])


def test_replace_marked(report, tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("# T\n<!-- x:begin -->\nold\n<!-- x:end -->\ntail\n")
    report.benchlib.replace_marked(doc, "x", "new\ntable\n")
    assert doc.read_text() == "# T\n<!-- x:begin -->\nnew\ntable\n<!-- x:end -->\ntail\n"
    with pytest.raises(ValueError, match="y:begin"):
        report.benchlib.replace_marked(doc, "y", "z")
