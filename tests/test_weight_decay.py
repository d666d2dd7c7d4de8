"""Weight decay follows the model's own list: norms, biases, relative-position bias tables and level
embeddings get none (mmseg's Swin / Mask2Former configs), conv and linear weights get it."""
import pytest
import torch
from torch import nn

from cssformer.engine.optim import build_optimizer, param_groups
from cssformer.models import build_model

NORMS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d, nn.SyncBatchNorm)


def _groups(model, weight_decay=0.05):
    decay, no_decay = param_groups(model, weight_decay)
    assert decay["weight_decay"] == weight_decay and no_decay["weight_decay"] == 0.0
    ids = {id(p) for p in decay["params"]}, {id(p) for p in no_decay["params"]}
    assert not ids[0] & ids[1]
    return ids


# a Swin-T-sized CSSFormer (the preset, 512 px, no pretrained file), and the nano preset
@pytest.mark.parametrize("name", ["cssformer-nano", "cssformer-swin-t", "msdeform-fpn-nano"])
def test_norms_biases_position_tables_and_level_embeddings_get_no_decay(name):
    model = build_model(name, num_classes=5)
    decayed, kept = _groups(model)
    params = dict(model.named_parameters())
    assert {id(p) for p in params.values()} == decayed | kept  # every parameter in one group
    assert id(model.decoder.level_embed) in kept
    tables = [p for n, p in params.items() if n.endswith("relative_position_bias_table")]
    assert tables and all(id(p) in kept for p in tables)
    norms = [p for m in model.modules() if isinstance(m, NORMS) for p in m.parameters()]
    assert norms and all(id(p) in kept for p in norms)
    biases = [p for n, p in params.items() if n.endswith(".bias")]
    assert biases and all(id(p) in kept for p in biases)
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(weights) > 20 and all(id(w) in decayed for w in weights)
    assert model.no_weight_decay() == {n for n, p in params.items() if id(p) in kept}


def test_a_plain_module_gets_the_same_rule_by_name():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.norm = nn.LayerNorm(4)
            self.level_embed = nn.Parameter(torch.zeros(3, 4))
            self.relative_position_bias_table = nn.Parameter(torch.zeros(9, 2))

    model = Tiny()
    decayed, kept = _groups(model)
    assert decayed == {id(model.conv.weight)}
    assert id(model.level_embed) in kept and id(model.relative_position_bias_table) in kept
    assert len(build_optimizer(model, 1e-3, 0.05).param_groups) == 2


def test_weight_decay_really_is_not_applied_to_the_level_embedding():
    model = build_model("cssformer-nano", num_classes=3)
    optimizer = build_optimizer(model, lr=1e-2, weight_decay=0.5)
    embed = model.decoder.level_embed
    weight = next(m.weight for m in model.decoder.modules() if isinstance(m, nn.Conv2d))
    before = embed.detach().clone(), weight.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # no gradient: only decay can move a parameter
    optimizer.step()
    assert torch.equal(embed, before[0])
    assert not torch.equal(weight, before[1])
