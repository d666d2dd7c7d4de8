"""The model benchmark (bench/bench_model.py) in its CI smoke mode, and the graph the compiler sees."""
import json

import pytest
import torch

import bench_scripts


@pytest.fixture(scope="module")
def bench():
    return bench_scripts.load("bench_model")


def test_smoke_mode_writes_json(bench, tmp_path):
    out = tmp_path / "model.json"
    assert bench.main(["--smoke", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["environment"]["device"] and result["environment"]["torch"] == torch.__version__
    rows = {r["model"]: r for r in result["rows"]}
    assert set(rows) == set(bench.SMOKE_MODELS)
    for row in rows.values():
        assert row["error"] is None, row
        for key in ("train_step_ms", "train_img_s", "infer_ms", "decoder_ms", "params_M"):
            assert row[key] > 0, (key, row)
    assert rows["cssformer-nano"]["backend"] == "auto"  # has sampling layers
    assert rows["upernet-nano"]["backend"] == "-"       # has none: one row whatever the backend
    assert result["loader"]["img_s"] > 0 and result["loader"]["dataset"] == "synthetic"


def test_bad_arguments_are_usage_errors(bench):
    for argv in (["--batch", "0"], ["--size", "64", "-1"], ["--steps", "0"], ["--precison", "fp32"]):
        with pytest.raises(SystemExit) as exc:
            bench.parse_args(argv)
        assert exc.value.code == 2, argv


def test_compiled_decoder_has_no_graph_break():
    # torch.compile sees the sampling op as one custom op: the whole decoder is one graph.
    import torch._dynamo as dynamo

    from cssformer.models import build_model

    model = build_model("cssformer-nano", 3, img_size=64).train()
    with torch.no_grad():
        features = [f.detach() for f in model.backbone(torch.randn(1, 3, 64, 64))]
    dynamo.reset()
    explained = dynamo.explain(model.decoder)(features)
    dynamo.reset()
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert explained.graph_count == 1
