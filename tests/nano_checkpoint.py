"""An untrained cssformer-nano saved as cssformer-train saves it: what the predict / eval / picture tests
read (no training needed)."""
import torch

from cssformer.data import SyntheticDataset


def save_nano(path, num_classes: int = 6, dataset_args: dict | None = None, model=None, seed: int = 0):
    """Writes the checkpoint to ``path`` (crop 32, the synthetic set's names and colours for 6 classes) and
    returns the model (``model``: save this one instead of a new one)."""
    from cssformer.engine.checkpoint import save_checkpoint
    from cssformer.engine.config import resolve
    from cssformer.models import build_model

    torch.manual_seed(seed)
    model = model or build_model("cssformer-nano", num_classes, img_size=32)
    flags = {"crop_size": 32, **({"dataset_args": dataset_args} if dataset_args else {})}
    meta = {"dataset": "synthetic", "class_names": SyntheticDataset.class_names,
            "palette": [list(c) for c in SyntheticDataset.palette]} if num_classes == 6 else {"dataset": "folder"}
    save_checkpoint({"model": model.state_dict(), "build_args": model.build_args, "iteration": 0,
                     "config": resolve({}, flags), "meta": meta}, path)
    return model
