"""`cssformer sweep`: trains a list of configs and writes the results table (paper vs reproduced);
docs/results.md holds the table of every shipped config."""
from pathlib import Path

from cssformer.cli import main
from cssformer.commands.sweep import BEGIN, END, table

ROOT = Path(__file__).resolve().parents[1]


def test_sweep_trains_a_config_and_fills_its_reproduced_cell(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text("dataset: synthetic\ndataset_args: {length: 4, size: 40}\ncrop_size: 32\nbatch_size: 2\n"
                      "iters: 2\neval_interval: 2\nwarmup_iters: 1\nnum_workers: 0\ndevice: cpu\n"
                      "reference: {paper_rows: [{table: '9', row: 'tiny', miou_ss: 12.5}]}\n")
    out = tmp_path / "results.md"
    out.write_text(f"# Results\n\nintro\n\n{BEGIN}\nold table\n{END}\n\nafter\n")
    root = tmp_path / "runs"
    assert main(["sweep", str(config), "--work-root", str(root), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# Results\n\nintro\n\n") and text.endswith(f"{END}\n\nafter\n") and "old table" not in text
    line = next(row for row in text.splitlines() if row.startswith("| `tiny`"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[4] == "9: tiny" and cells[5] == "12.50" and float(cells[6]) >= 0
    assert (root / "tiny" / "iter_000002.pth").is_file()
    # a finished run is not trained again
    capsys.readouterr()
    assert main(["sweep", str(config), "--work-root", str(root), "--out", str(out)]) == 0
    assert "already done" in capsys.readouterr().out


def test_sweep_checks_every_name_before_running(tmp_path, capsys):
    assert main(["sweep", "cssformer-swin-t_ade20k-512", "no-such-config", "--work-root", str(tmp_path)]) == 2
    assert "no-such-config" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_results_doc_lists_every_shipped_config():
    text = (ROOT / "docs" / "results.md").read_text()
    current = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert current == table([], ROOT / "no-runs-here").strip(), \
        "docs/results.md is stale: cssformer sweep --collect --work-root <empty> --out docs/results.md"
