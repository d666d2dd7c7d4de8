"""`cssformer predict`: colour masks and overlays in the dataset's palette."""
import numpy as np
import pytest
import torch
from PIL import Image

from cssformer.cli import main
from cssformer.commands.predict import colorize, overlay
from cssformer.data import SyntheticDataset
from nano_checkpoint import save_nano


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("predict") / "model.pth"
    save_nano(path)
    return path


def _images(folder, n=2, size=(40, 52)):
    folder.mkdir(parents=True, exist_ok=True)
    ds = SyntheticDataset("val", length=n, size=64)
    for i in range(n):
        Image.fromarray(ds[i]["image"][: size[0], : size[1]]).save(folder / f"scene{i}.png")
    return folder


def test_predict_writes_masks_and_overlays_for_a_folder_and_a_file(checkpoint, tmp_path, capsys):
    folder = _images(tmp_path / "in")
    extra = tmp_path / "single.jpg"
    Image.fromarray(SyntheticDataset("train", length=1, size=48)[0]["image"]).save(extra)
    out = tmp_path / "out"
    rc = main(["predict", str(folder), str(extra), "-c", str(checkpoint), "-o", str(out), "--save-labels",
               "--device", "cpu", "--batch-size", "2"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "wrote 3 colour masks and overlays" in printed and "images/s" in printed and "batch size 2" in printed
    palette = {tuple(c) for c in SyntheticDataset.palette}
    for stem, shape in (("scene0", (40, 52)), ("scene1", (40, 52)), ("single", (48, 48))):
        indexed = Image.open(out / f"{stem}_mask.png")
        assert indexed.mode == "P"  # pixel values = class ids, its palette = the dataset's colours
        mask = np.asarray(indexed.convert("RGB"))
        labels = np.asarray(Image.open(out / f"{stem}_labels.png"))
        np.testing.assert_array_equal(np.asarray(indexed), labels)
        over = np.asarray(Image.open(out / f"{stem}_overlay.png"))
        assert mask.shape == shape + (3,) and labels.shape == shape
        assert over.shape[0] > shape[0] and over.shape[1] == max(shape[1], 200)  # the legend below the overlay
        assert {tuple(c) for c in mask.reshape(-1, 3)} <= palette
        np.testing.assert_array_equal(mask, colorize(labels, SyntheticDataset.palette))
        image = np.asarray(Image.open(folder / f"{stem}.png")) if stem != "single" else np.asarray(Image.open(extra))
        np.testing.assert_array_equal(over[: shape[0], : shape[1]], overlay(image, mask, 0.5))


def test_colorize_and_overlay():
    palette = [(10, 20, 30), (200, 100, 0)]
    labels = np.array([[0, 1], [255, 1]], np.uint8)
    colours = colorize(labels, palette)
    assert colours[0, 0].tolist() == [10, 20, 30] and colours[1, 0].tolist() == [0, 0, 0]
    image = np.full((2, 2, 3), 100, np.uint8)
    assert overlay(image, colours, 0.5)[0, 1].tolist() == [150, 100, 50]


def test_predict_bad_inputs_name_the_file_and_keep_earlier_outputs(checkpoint, tmp_path, capsys):
    assert main(["predict", str(tmp_path / "nope.png"), "-c", str(checkpoint)]) == 2
    assert f"input not found: {tmp_path / 'nope.png'}" in capsys.readouterr().err
    folder = _images(tmp_path / "in", n=1)
    (folder / "zz_broken.png").write_bytes(b"garbage")
    out = tmp_path / "out"
    rc = main(["predict", str(folder), "-c", str(checkpoint), "-o", str(out), "--device", "cpu"])
    assert rc == 2
    assert f"cannot read image {folder / 'zz_broken.png'}" in capsys.readouterr().err
    assert (out / "scene0_mask.png").is_file()  # written before the broken file was reached


def test_predict_palette_file_opacity_and_no_legend(checkpoint, tmp_path, capsys):
    folder = _images(tmp_path / "in", n=1)
    colours = [(i * 40, 255 - i * 40, 7) for i in range(6)]
    palette = tmp_path / "palette.txt"
    palette.write_text("".join(f"{r} {g} {b}\n" for r, g, b in colours))
    out = tmp_path / "out"
    assert main(["predict", str(folder), "-c", str(checkpoint), "-o", str(out), "--palette", str(palette),
                 "--legend", "none", "--opacity", "0.3", "--device", "cpu"]) == 0
    indexed = Image.open(out / "scene0_mask.png")
    labels = np.asarray(indexed)
    assert indexed.getpalette()[:18] == [v for c in colours for v in c]
    over = np.asarray(Image.open(out / "scene0_overlay.png"))
    image = np.asarray(Image.open(folder / "scene0.png"))
    np.testing.assert_array_equal(over, overlay(image, colorize(labels, colours), 0.3))  # no legend: same size
    palette.write_text("1 2 3\n")
    assert main(["predict", str(folder), "-c", str(checkpoint), "-o", str(tmp_path / "o2"), "--palette",
                 str(palette), "--device", "cpu"]) == 2
    assert "1 colours for 6 classes" in capsys.readouterr().err
    assert main(["predict", str(folder), "-c", str(checkpoint), "--batch-size", "0"]) == 2
    assert "--batch-size: got 0, expected >= 1" in capsys.readouterr().err
