"""Pictures (legends, overlays, evaluation panels, charts), label PNGs, palettes and batched prediction."""
import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import cssformer
from cssformer import visualisation as vis
from cssformer.cli import main
from cssformer.data import SyntheticDataset
from cssformer.errors import UsageError
from nano_checkpoint import save_nano

NAMES, PALETTE = SyntheticDataset.class_names, SyntheticDataset.palette


def _scene(size=40, index=0):
    sample = SyntheticDataset("val", length=index + 1, size=size)[index]
    return sample["image"], sample["mask"]


# --- legends ---------------------------------------------------------------------------------------------

def test_legend_draws_each_class_colour_and_its_name():
    picture, boxes = vis.draw_legend([0, 2, 5], NAMES, PALETTE, width=300)
    assert picture.shape[1] == 300 and picture.dtype == np.uint8
    assert [b[0] for b in boxes] == [0, 2, 5]
    for class_id, (x0, y0, x1, y1), (tx0, ty0, tx1, ty1) in boxes:
        inside = picture[y0 + 2:y1 - 2, x0 + 2:x1 - 2].reshape(-1, 3)
        assert (inside == PALETTE[class_id]).all()  # the swatch is the class colour
        text = picture[ty0:ty1, tx0:tx1]
        assert (text.max(-1) < 120).sum() > 10  # dark text pixels: the name is drawn
    other, _ = vis.draw_legend([0, 2, 5], ["x", "y", "z", "w", "v", "u"], PALETTE, width=300)
    assert not np.array_equal(other, picture)  # the names, not only the swatches, make the picture


def test_with_legend_lists_present_or_all_classes_below_the_unchanged_picture():
    image, mask = _scene()
    picture = vis.overlay(image, vis.colorize(mask, PALETTE), 0.5)
    present = sorted(np.unique(mask).tolist())
    assert len(present) < len(NAMES)
    framed = vis.with_legend(picture, mask, NAMES, PALETTE)
    assert framed.shape[1] == 200 and framed.shape[0] > 40  # narrow pictures get a legend 200 px wide
    np.testing.assert_array_equal(framed[:40, :40], picture)
    strip = framed[40:]
    legend_colours = {c for c in map(tuple, strip.reshape(-1, 3).tolist()) if c in set(PALETTE)}
    assert legend_colours == {PALETTE[c] for c in present}
    everything = vis.with_legend(picture, mask, NAMES, PALETTE, "all")[40:]
    assert {c for c in map(tuple, everything.reshape(-1, 3).tolist()) if c in set(PALETTE)} == set(PALETTE)
    assert vis.with_legend(picture, mask, NAMES, PALETTE, "none") is picture
    with pytest.raises(ValueError, match="present, all, none"):
        vis.with_legend(picture, mask, NAMES, PALETTE, "some")


def test_eval_panel_has_four_tiles_at_a_readable_size_and_marks_errors_and_ignored_pixels():
    image, mask = _scene(40)
    pred = mask.copy()
    pred[10:20, 10:20] = (pred[10:20, 10:20] + 1) % 6
    gt = mask.copy()
    gt[:4] = 255
    panel = vis.eval_panel(image, gt, pred, NAMES, PALETTE)
    scale = vis.panel_scale(40, 40)
    assert scale == 4  # a 40 px image is enlarged to 160 px tiles
    assert panel.shape[1] == 4 * 160 + 3 * 4
    tiles_top = panel.shape[0] - 160  # title bar above the tiles, legend below: find the error tile's red
    errors = panel[:, 3 * 164:]
    red = (errors == vis.ERROR_COLOUR).all(-1)
    wrong = int(((pred != gt) & (gt != 255)).sum())
    assert red.sum() == wrong * 16 and tiles_top > 0
    with pytest.raises(ValueError, match="same height and width"):
        vis.eval_panel(image, gt[:30], pred, NAMES, PALETTE)


def test_panel_scale_shrinks_large_images():
    assert vis.panel_scale(1024, 2048) == pytest.approx(640 / 2048)
    assert vis.panel_scale(300, 400) == 1.0


# --- label PNGs ------------------------------------------------------------------------------------------

def test_indexed_png_round_trips_labels_and_palette(tmp_path):
    labels = np.random.default_rng(0).integers(0, 6, (17, 23)).astype(np.uint8)
    path = tmp_path / "m.png"
    vis.save_label_png(labels, path, PALETTE)
    with Image.open(path) as im:
        assert im.mode == "P"
        assert im.getpalette()[:18] == [v for c in PALETTE for v in c]
        np.testing.assert_array_equal(np.asarray(im), labels)
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), vis.colorize(labels, PALETTE))


def test_labels_above_255_round_trip_as_16_bit_grey(tmp_path):
    labels = np.random.default_rng(0).integers(0, 1000, (9, 11)).astype(np.int32)
    labels[0, 0] = 65535
    path = tmp_path / "l.png"
    vis.save_label_png(labels, path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")
    np.testing.assert_array_equal(vis.read_label_png(path), labels)
    small = np.array([[0, 255]], np.uint8)
    vis.save_label_png(small, tmp_path / "s.png", palette=[(1, 2, 3)] * 300)  # > 256 classes: 16-bit
    with Image.open(tmp_path / "s.png") as im:
        assert im.mode.startswith("I")
    with pytest.raises(ValueError, match="65535"):
        vis.label_image(np.array([[65536]]))


def test_predict_save_labels_with_more_than_256_classes_writes_16_bit_labels(tmp_path):
    from cssformer.models import build_model

    torch.manual_seed(0)
    model = build_model("cssformer-nano", 300, img_size=32)
    with torch.no_grad():  # classes above 255 get a head start
        head = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels == 300][-1]
        head.bias[256:] += 50.0
    path = tmp_path / "big.pth"
    save_nano(path, 300, model=model)
    image, _ = _scene(32)
    Image.fromarray(image).save(tmp_path / "x.png")
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "x.png"), "-c", str(path), "-o", str(out), "--save-labels",
                 "--device", "cpu"]) == 0
    labels = vis.read_label_png(out / "x_labels.png")
    from cssformer.data.transforms import to_tensor

    with torch.no_grad():
        want = model.eval()(to_tensor(image)[None]).argmax(1)[0].numpy()
    assert want.max() > 255
    np.testing.assert_array_equal(labels, want)  # not label mod 256
    assert np.asarray(Image.open(out / "x_mask.png")).shape == (32, 32, 3)  # no PNG palette that big: RGB


# --- palettes --------------------------------------------------------------------------------------------

def test_standard_palettes_of_known_datasets():
    from cssformer.data import classes

    assert len(classes.ADE20K_PALETTE) == len(classes.ADE20K) == 150
    assert classes.ADE20K_PALETTE[:3] == ((120, 120, 120), (180, 120, 120), (6, 230, 230))
    assert len(set(classes.ADE20K_PALETTE)) > 140
    assert len(classes.PASCAL_CONTEXT_59_PALETTE) == 59 and len(classes.PASCAL_CONTEXT_60_PALETTE) == 60
    assert classes.PASCAL_CONTEXT_59_PALETTE[0] == (180, 120, 120)  # mmseg's 59-class palette starts here
    assert len(classes.CITYSCAPES_PALETTE) == 19


def test_palette_file_beside_classes_txt_and_dataset_args_palette(tmp_path):
    from cssformer.data.registry import build_dataset

    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "images" / "a.png")
    Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8).repeat(2, 0).repeat(2, 1)).save(root / "masks" / "a.png")
    (root / "classes.txt").write_text("road\ncar\nsky\n")
    (root / "palette.txt").write_text("128 64 128\n0,0,142\n\n#4682b4\n")
    ds = build_dataset("folder", "train", str(root))
    assert ds.palette == [(128, 64, 128), (0, 0, 142), (70, 130, 180)]
    (root / "palette.txt").write_text("128 64 128\n0 0 300\n1 2 3\n")
    with pytest.raises(UsageError, match=r"colour 1 is \[0, 0, 300\], expected \[r, g, b\] integers in 0..255"):
        build_dataset("folder", "train", str(root))
    (root / "palette.txt").write_text("128 64 128\n")
    with pytest.raises(UsageError, match="1 colours for 3 classes"):
        build_dataset("folder", "train", str(root))
    (root / "palette.txt").write_text("red\n")
    with pytest.raises(UsageError, match="line 1: 'red' is not a colour"):
        build_dataset("folder", "train", str(root))
    synthetic = build_dataset("synthetic", "val", length=1, size=8, palette=[[i, i, i] for i in range(6)])
    assert synthetic.palette[5] == (5, 5, 5) and SyntheticDataset.palette[5] != (5, 5, 5)
    with pytest.raises(UsageError, match="colour 0 is \\[1, 2\\]"):
        build_dataset("synthetic", "val", length=1, size=8, palette=[[1, 2]] * 6)


# --- the prediction API ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    from cssformer.models import build_model

    torch.manual_seed(0)
    net = build_model("cssformer-nano", 6, img_size=32).eval()
    net.class_names, net.palette = list(NAMES), list(PALETTE)
    return net


def test_predict_mask_batches_give_one_mask_per_image(model):
    from cssformer.data.transforms import to_tensor

    images = [_scene(32, i)[0] for i in range(2)]
    singles = [cssformer.predict_mask(model, image) for image in images]
    assert singles[0].shape == (32, 32) and (singles[0] != singles[1]).any()  # different images, masks
    listed = cssformer.predict_mask(model, [*images, images[0][:24]], batch_size=2)  # sizes differ in a list
    assert isinstance(listed, list) and [m.shape for m in listed] == [(32, 32), (32, 32), (24, 32)]
    stacked = cssformer.predict_mask(model, np.stack(images))
    normalised = cssformer.predict_mask(model, torch.stack([to_tensor(i) for i in images]))
    assert stacked.shape == normalised.shape == (2, 32, 32)
    for single, *batched in zip(singles, listed, stacked, normalised):
        for mask in batched:
            assert (mask == single).mean() > 0.99  # batched float sums may differ in the last bit
    overlays = cssformer.predict_overlay(model, np.stack(images), legend="present")  # legends may differ
    assert overlays.shape[0] == 2 and overlays.shape[1] > 32 and overlays.shape[2:] == (200, 3)
    for picture, image, mask in zip(overlays, images, singles):
        assert (picture[:32, :32] == vis.overlay(image, vis.colorize(mask, PALETTE), 0.5)).all(-1).mean() > 0.99


@pytest.mark.parametrize("options, message", [
    ({"ratios": [0]}, "ratios must be a non-empty list of ratios in (0, 16], got [0]"),
    ({"ratios": [-1.0]}, "ratios must be"), ({"ratios": [float("nan")]}, "ratios must be"),
    ({"ratios": []}, "ratios must be"),
    ({"mode": "bogus"}, "test.mode must be whole or slide, got 'bogus'"),
    ({"mode": "slide"}, "test.mode slide needs test.crop and test.stride"),
    ({"flipp": True}, "test options: unknown flipp; expected some of mode, crop, stride, ratios, flip, scale"),
])
def test_predict_mask_refuses_bad_options(model, options, message):
    with pytest.raises(ValueError) as err:
        cssformer.predict_mask(model, np.zeros((8, 8, 3), np.uint8), **options)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_predict_mask_refuses_unnormalised_floats_and_empty_images(model):
    for pixels in (torch.rand(3, 8, 8) * 255, torch.rand(2, 3, 8, 8) * 255):
        with pytest.raises(ValueError, match="is not normalised .* pass a uint8"):
            cssformer.predict_mask(model, pixels)
    with pytest.raises(ValueError, match="NaN"):
        cssformer.predict_mask(model, torch.full((3, 8, 8), float("nan")))
    for empty in (np.zeros((0, 8, 3), np.uint8), torch.zeros(3, 8, 0), np.zeros((8, 0, 3), np.uint8)):
        with pytest.raises(ValueError, match="no pixels"):
            cssformer.predict_mask(model, empty)
    with pytest.raises(ValueError, match="empty list"):
        cssformer.predict_mask(model, [])
    with pytest.raises(ValueError, match="batch_size"):
        cssformer.predict_mask(model, np.zeros((8, 8, 3), np.uint8), batch_size=0)


# --- evaluation pictures ---------------------------------------------------------------------------------

DATA = {"length": 4, "size": 40}


@pytest.fixture(scope="module")
def eval_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("vis") / "model.pth"
    save_nano(path, dataset_args=DATA)
    return path


def test_eval_show_dir_writes_panels_and_charts_beside_the_json(eval_checkpoint, tmp_path, capsys):
    show, out = tmp_path / "show", tmp_path / "result.json"
    assert main(["eval", str(eval_checkpoint), "--out", str(out), "--show-dir", str(show), "--show-count", "2",
                 "--device", "cpu", "--num-workers", "0"]) == 0
    panels = sorted(show.glob("*.png"))
    assert [p.name for p in panels] == ["synthetic_val_00000.png", "synthetic_val_00003.png"]  # spread out
    for panel in panels:
        assert Image.open(panel).size[0] == 4 * 160 + 3 * 4  # 40 px images in 160 px tiles
    result = json.loads(out.read_text())
    confusion = np.array(result["confusion"])
    assert confusion.shape == (6, 6) and confusion.sum() == 4 * 40 * 40
    for name in ("result_confusion.png", "result_iou.png"):
        with Image.open(tmp_path / name) as chart:
            assert chart.text["classes"] == "6" and chart.size[0] > 400
    assert "panels: 2 in" in capsys.readouterr().out
    # a second run into the same folder would mix two runs' panels: refused before any work
    assert main(["eval", str(eval_checkpoint), "--show-dir", str(show), "--device", "cpu"]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert main(["eval", str(eval_checkpoint), "--show-count", "2", "--device", "cpu"]) == 2
    assert "--show-count needs --show-dir" in capsys.readouterr().err


def test_sample_indices_spread_over_the_dataset():
    assert vis.sample_indices(10, 3) == [0, 4, 9] or vis.sample_indices(10, 3) == [0, 5, 9]
    assert vis.sample_indices(4, None) == [0, 1, 2, 3] and vis.sample_indices(2, 5) == [0, 1]


def test_charts_are_skipped_with_one_line_without_matplotlib(tmp_path, monkeypatch, capsys):
    from rich.console import Console

    from cssformer.commands.evaluate import write_charts

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    charts = {"confusion": tmp_path / "c.png", "iou": tmp_path / "i.png"}
    write_charts(charts, {"confusion": [[1, 0], [0, 1]], "IoU": [100.0, 100.0], "mIoU": 100.0}, ["a", "b"],
                 Console())
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and "skipped the confusion-matrix and IoU charts" in line and "cssformer[plot]" in line
    assert not charts["confusion"].exists()


def test_confusion_matrix_and_iou_chart_for_many_classes():
    k = 70  # above 60 classes only every n-th name is written
    confusion = np.random.default_rng(0).integers(0, 50, (k, k))
    confusion[3] = 0  # a class without ground-truth pixels
    names = [f"class {i}" for i in range(k)]
    import io

    with Image.open(io.BytesIO(vis.confusion_matrix_png(confusion, names))) as png:
        assert png.text["classes"] == "70" and max(png.size) <= 2400
    iou = [float("nan")] + [float(v) for v in np.linspace(0, 100, k - 1)]
    with Image.open(io.BytesIO(vis.iou_chart_png(iou, names, 50.0))) as png:
        assert png.text["classes"] == "70"
    with pytest.raises(ValueError, match="do not match"):
        vis.confusion_matrix_png(confusion, names[:-1])
