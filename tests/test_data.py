"""Datasets in each benchmark layout (built in a temporary folder), the folder and synthetic sets,
and the errors a user sees for a broken dataset."""
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cssformer.data import DatasetError, SyntheticDataset, build_dataset


def _write(image_path: Path, mask_path: Path, labels: np.ndarray) -> None:
    image_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.stack([labels * 3, labels * 5 % 256, 255 - labels], -1).astype(np.uint8)
    Image.fromarray(rgb).save(image_path)
    Image.fromarray(labels.astype(np.uint8)).save(mask_path)


def _labels(seed: int, top: int, h: int = 12, w: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, top, size=(h, w))


def make_ade20k(root: Path) -> Path:
    base = root / "ADEChallengeData2016"
    for split, n in (("training", 3), ("validation", 2)):
        for i in range(n):
            _write(base / "images" / split / f"ADE_{split}_{i:08d}.jpg",
                   base / "annotations" / split / f"ADE_{split}_{i:08d}.png", _labels(i, 151))
    return base


def make_cityscapes(root: Path) -> Path:
    base = root / "cityscapes"
    for split, city in (("train", "aachen"), ("val", "lindau")):
        for i in range(2):
            name = f"{city}_000000_{i:06d}"
            _write(base / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png",
                   base / "gtFine" / split / city / f"{name}_gtFine_labelTrainIds.png", _labels(i, 19))
    return base


def make_pascal_context(root: Path) -> Path:
    base = root / "VOCdevkit" / "VOC2010"
    sets = base / "ImageSets" / "SegmentationContext"
    sets.mkdir(parents=True)
    names = {"train": ["2008_000002", "2008_000003"], "val": ["2008_000008"]}
    for split, ids in names.items():
        (sets / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for i, name in enumerate(ids):
            _write(base / "JPEGImages" / f"{name}.jpg", base / "SegmentationClassContext" / f"{name}.png", _labels(i, 60))
    return base


def make_coco_stuff(root: Path) -> Path:
    base = root / "coco_stuff10k"
    for split in ("train2014", "test2014"):
        for i in range(2):
            name = f"COCO_{split}_{i:012d}"
            _write(base / "images" / split / f"{name}.jpg",
                   base / "annotations" / split / f"{name}_labelTrainIds.png", _labels(i, 171))
    return base


def make_folder(root: Path, splits: bool = True, classes: int | None = 4) -> Path:
    base = root / "plain"
    for split in (("train", "val") if splits else ("",)):
        for i in range(2):
            _write(base / "images" / split / f"img{i}.png", base / "masks" / split / f"img{i}.png", _labels(i, 4))
    if classes:
        (base / "classes.txt").write_text("\n".join(f"class{c}" for c in range(classes)) + "\n")
    return base


LAYOUTS = {
    "ade20k": (make_ade20k, 150, 3, 2, True),
    "cityscapes": (make_cityscapes, 19, 2, 2, False),
    "pascal_context_59": (make_pascal_context, 59, 2, 1, True),
    "pascal_context_60": (make_pascal_context, 60, 2, 1, False),  # background (0) is a class
    "coco_stuff_10k": (make_coco_stuff, 171, 2, 2, False),
    "folder": (make_folder, 4, 2, 2, False),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_benchmark_layouts_load(tmp_path, name):
    make, num_classes, n_train, n_val, reduce_zero = LAYOUTS[name]
    root = make(tmp_path)
    train = build_dataset(name, "train", root=str(root))
    val = build_dataset(name, "val", root=str(root))
    assert (len(train), len(val)) == (n_train, n_val)
    assert train.num_classes == len(train.class_names) == len(train.palette) == num_classes
    sample = train[0]
    assert sample["image"].shape == (12, 16, 3) and sample["image"].dtype == np.uint8
    raw = np.asarray(Image.open(train.pairs[0][1]))
    if reduce_zero:  # 0 -> ignore, k -> k - 1
        want = np.where(raw == 0, 255, raw.astype(int) - 1)
    else:
        want = raw
    np.testing.assert_array_equal(sample["mask"], want)
    if train.pairs[0][0].suffix == ".png":  # the image really is the mask's partner (lossless: exact)
        np.testing.assert_array_equal(sample["image"][..., 2], 255 - raw)


def test_folder_without_splits_and_without_class_file_counts_classes(tmp_path):
    root = make_folder(tmp_path, splits=False, classes=None)
    ds = build_dataset("folder", "train", root=str(root))
    assert len(ds) == 2 and ds.num_classes == 4


def test_synthetic_is_seeded_and_has_all_classes():
    a, b = SyntheticDataset("train", length=40, size=64, seed=3), SyntheticDataset("train", length=40, size=64, seed=3)
    np.testing.assert_array_equal(a[5]["image"], b[5]["image"])
    assert not np.array_equal(a[5]["image"], SyntheticDataset("train", length=40, size=64, seed=4)[5]["image"])
    assert not np.array_equal(a[5]["mask"], SyntheticDataset("val", length=40, size=64, seed=3)[5]["mask"])
    labels = np.concatenate([a[i]["mask"].ravel() for i in range(40)])
    counts = np.bincount(labels, minlength=a.num_classes)
    assert (counts > 0).all() and len(counts) == a.num_classes


def test_synthetic_small_and_large_stripes_differ_in_size():
    ds = SyntheticDataset("train", length=30, size=96)
    sizes = {1: [], 2: []}
    for i in range(30):
        mask = ds[i]["mask"]
        for label in sizes:
            if (mask == label).any():
                sizes[label].append((mask == label).sum())
    # one large object per image vs 2-6 small ones: the large class still covers far more per image
    assert np.median(sizes[1]) > 2 * np.median(sizes[2])


# --- bad datasets: each error names the file or folder ---

def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(DatasetError, match="not found: .*nowhere"):
        build_dataset("folder", "train", root=str(tmp_path / "nowhere"))
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    with pytest.raises(DatasetError, match="no images in .*empty"):
        build_dataset("folder", "train", root=str(tmp_path / "empty"))
    with pytest.raises(DatasetError, match="images.*training"):
        build_dataset("ade20k", "train", root=str(tmp_path / "empty"))


def test_image_without_mask_names_both(tmp_path):
    root = make_ade20k(tmp_path)
    (root / "annotations" / "training" / "ADE_training_00000001.png").unlink()
    with pytest.raises(DatasetError, match="ADE_training_00000001.jpg has no mask: expected .*ADE_training_00000001.png"):
        build_dataset("ade20k", "train", root=str(root))


def test_labels_outside_the_classes_name_the_mask(tmp_path):
    root = make_cityscapes(tmp_path)
    bad = root / "gtFine" / "val" / "lindau" / "lindau_000000_000001_gtFine_labelTrainIds.png"
    Image.fromarray(np.full((12, 16), 40, np.uint8)).save(bad)
    ds = build_dataset("cityscapes", "val", root=str(root))
    with pytest.raises(DatasetError, match=r"lindau_000000_000001_gtFine_labelTrainIds.png holds labels \[40\]"):
        ds[1]
    ok = np.full((12, 16), 255, np.uint8)  # the ignore index is fine
    Image.fromarray(ok).save(bad)
    assert (ds[1]["mask"] == 255).all()


def test_unreadable_image_and_rgb_mask(tmp_path):
    root = make_folder(tmp_path)
    (root / "images" / "train" / "img0.png").write_bytes(b"not a png")
    ds = build_dataset("folder", "train", root=str(root))
    with pytest.raises(DatasetError, match="cannot read image .*img0.png"):
        ds[0]
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(root / "masks" / "train" / "img1.png")
    with pytest.raises(DatasetError, match="img1.png has mode 'RGB'"):
        ds[1]


def test_class_file_disagreeing_with_num_classes(tmp_path):
    root = make_folder(tmp_path)
    with pytest.raises(DatasetError, match="classes.txt lists 4 classes but num_classes is 7"):
        build_dataset("folder", "train", root=str(root), num_classes=7)


CAMVID = Path(os.environ.get("CSSFORMER_CAMVID") or "/nonexistent")  # research-only frames, never shipped


@pytest.mark.skipif(not CAMVID.is_dir(), reason="real CamVid frames absent: set CSSFORMER_CAMVID to their folder "
                                                "(research-only licence, not in the repository)")
def test_real_camvid_frames_load_as_a_folder_dataset():
    train, val = build_dataset("folder", "train", root=str(CAMVID)), build_dataset("folder", "val", root=str(CAMVID))
    assert (len(train), len(val)) == (46, 16) and train.num_classes == 11 and train.class_names[0] == "sky"
    sample = val[0]
    assert sample["image"].shape == (360, 480, 3) and sample["mask"].shape == (360, 480)
    labels = set(np.unique(sample["mask"]).tolist())
    assert labels <= set(range(11)) | {255} and len(labels) > 3


def test_folder_with_one_split_folder_missing(tmp_path):
    root = make_folder(tmp_path)
    import shutil
    shutil.rmtree(root / "images" / "val")
    with pytest.raises(DatasetError, match=r"has split folders but no .*images/val"):
        build_dataset("folder", "val", root=str(root))
