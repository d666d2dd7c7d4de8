"""Config -> datasets and model, with user errors turned into clear messages."""
from __future__ import annotations

from cssformer.errors import UsageError
from cssformer.data.registry import build_dataset
from cssformer.data.transforms import train_transforms


def datasets(cfg: dict):
    """(train, val) datasets of a resolved config."""
    args = dict(cfg["dataset_args"] or {})
    if cfg["dataset"] == "synthetic":
        args.setdefault("seed", cfg["seed"])
    try:
        train = build_dataset(cfg["dataset"], "train", cfg["data_root"], **args)
        val = build_dataset(cfg["dataset"], "val", cfg["data_root"], **args)
    except (TypeError, ValueError) as err:
        if isinstance(err, UsageError):
            raise
        raise UsageError(f"dataset_args {args} do not fit dataset {cfg['dataset']!r}: {err}") from None
    return train, val


def transforms(cfg: dict):
    return train_transforms(cfg["crop_size"], cfg["resize_scale"], cfg["ratio_range"], cfg["cat_max_ratio"],
                            photometric=cfg["photometric"])


def model(cfg: dict, num_classes: int):
    from cssformer.models import build_model

    overrides = dict(cfg["model_args"] or {})
    overrides.setdefault("img_size", cfg["crop_size"])  # the model is built at the training size
    if cfg.get("pretrained"):
        overrides["pretrained"] = cfg["pretrained"]
    try:
        return build_model(cfg["model"], num_classes, **overrides)
    except ValueError as err:  # first line only: torch.load failures append pages of advice
        raise UsageError(str(err).strip().splitlines()[0]) from None
    except FileNotFoundError as err:
        url = (cfg.get("reference") or {}).get("pretrained_url")
        raise UsageError(f"pretrained backbone file not found: {err.filename or cfg['pretrained']}"
                         + (f" (download it from {url})" if url else "")) from None
