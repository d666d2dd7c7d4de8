"""Shapes and contracts of each decoder module: CIA, MSFE, CSF, heads, and the decoder's ablation switches."""
import pytest
import torch

from cssformer.models.cia import CIA
from cssformer.models.csf import CSF, SpatialReductionAttention
from cssformer.models.decoders.cssformer import CSSFormerConfig, CSSFormerDecoder
from cssformer.models.heads import Classifier, FCNHead, FusionHead
from cssformer.models.layers import pixel_reference_points, pyramid_positions, sine_position_encoding
from cssformer.models.msfe import MSFE

SHAPES = [(16, 16), (8, 8), (4, 4), (2, 2)]
CHANNELS = [8, 16, 32, 64]


def _pyramid(n=2, channels=CHANNELS):
    return [torch.randn(n, c, h, w) for c, (h, w) in zip(channels, SHAPES)]


def _flat_inputs(n=2, dim=32):
    s = sum(h * w for h, w in SHAPES)
    pos = torch.cat([sine_position_encoding(h, w, dim, "cpu") for h, w in SHAPES])[None]
    ref = pixel_reference_points(SHAPES, "cpu")[None].expand(n, -1, -1)
    return torch.randn(n, s, dim), pos, ref


def test_reference_points_are_pixel_centres_in_xy_order():
    ref = pixel_reference_points([(2, 4)], "cpu")
    assert ref.shape == (8, 2)
    torch.testing.assert_close(ref[1], torch.tensor([0.375, 0.25]))   # row 0, column 1: x = 1.5 / 4, y = 0.5 / 2
    torch.testing.assert_close(ref[4], torch.tensor([0.125, 0.75]))   # row 1, column 0


def test_sine_position_encoding_shape_and_distinct_positions():
    pos = sine_position_encoding(3, 5, 16, "cpu")
    assert pos.shape == (15, 16)
    assert torch.unique(pos, dim=0).shape[0] == 15
    with pytest.raises(ValueError, match="even"):
        sine_position_encoding(3, 5, 15, "cpu")


@pytest.mark.parametrize("reweight", ["query", "significance"])
def test_cia_keeps_shape_and_reweights_channels(reweight):
    cia = CIA(32, reweight=reweight).eval()
    x = torch.randn(2, 32, 12, 10)
    out = cia(x)
    assert out.shape == x.shape
    if reweight == "query":
        # x * w + x with w in (0, 1): every channel is scaled by a factor in (1, 2)
        ratio = out / x
        assert ((ratio > 1) & (ratio < 2)).all()
        assert torch.allclose(ratio, ratio[:, :, :1, :1].expand_as(ratio), atol=1e-4)


def test_cia_bad_config():
    with pytest.raises(ValueError, match="cia_reduction"):
        CIA(30, reduction=4)
    with pytest.raises(ValueError, match="cia_pool_sizes"):
        CIA(32, pool_sizes=(0, 2))


def test_msfe_maps_flat_levels_to_same_shape():
    tokens, pos, ref = _flat_inputs()
    msfe = MSFE(32, n_levels=4, n_heads=4, n_points=3, ffn_dim=64, num_layers=2)
    out = msfe(tokens, pos, ref, SHAPES)
    assert out.shape == tokens.shape
    assert len(msfe.layers) == 2 and msfe.layers[0].attn.n_points == 3


def test_spatial_reduction_attention_shapes():
    sra = SpatialReductionAttention(32, n_heads=4, sr=4)
    x = torch.randn(2, 32, 8, 12)
    out = sra(x, sine_position_encoding(8, 12, 32, "cpu")[None])
    assert out.shape == (2, 96, 32)
    with pytest.raises(ValueError, match="csf_heads"):
        SpatialReductionAttention(30, n_heads=4, sr=1)


def test_csf_returns_one_map_per_scale_and_every_scale_sees_every_other():
    torch.manual_seed(0)
    tokens, pos, ref = _flat_inputs(n=1)
    queries = [torch.randn(1, 32, h, w) for h, w in SHAPES]
    csf = CSF(32, sr_ratios=(4, 2, 1, 1), csf_heads=4, n_heads=4, n_points=2, ffn_dim=64).eval()
    out = csf(queries, pos, ref, tokens, SHAPES)
    assert [tuple(o.shape) for o in out] == [(1, 32, h, w) for h, w in SHAPES]
    # the stride-4 queries sample the full-scale features of the coarsest level: changing only that level's
    # full-scale features changes the finest output
    changed = tokens.clone()
    changed[:, -4:] += 5.0
    out2 = csf(queries, pos, ref, changed, SHAPES)
    assert not torch.allclose(out[0], out2[0])


def test_heads_shapes():
    feats = _pyramid(channels=[16] * 4)
    assert FusionHead([16] * 4, 24, 7)(feats).shape == (2, 7, 16, 16)
    assert FCNHead(32, 24, 7)(torch.randn(2, 32, 4, 6)).shape == (2, 7, 4, 6)


def test_classifier_is_dropout_then_1x1_conv_with_the_old_parameter_names():
    torch.manual_seed(0)
    cls = Classifier(16, 5, dropout=0.5)
    assert set(cls.state_dict()) == {"weight", "bias"} and cls.kernel_size == (1, 1)
    x = torch.randn(2, 16, 3, 4)
    old_drop, old_conv = torch.nn.Dropout2d(0.5), torch.nn.Conv2d(16, 5, 1)
    old_conv.load_state_dict(cls.state_dict())
    torch.testing.assert_close(cls.eval()(x), old_conv(old_drop.eval()(x)))
    torch.manual_seed(1)
    got = cls.train()(x)
    torch.manual_seed(1)
    torch.testing.assert_close(got, old_conv(old_drop.train()(x)))


def test_pyramid_positions_are_sine_plus_level_embedding_and_pixel_centres():
    feats = _pyramid(n=3, channels=[32] * 4)
    level_embed = torch.randn(4, 32)
    shapes, pos, ref = pyramid_positions(feats, level_embed)
    assert shapes == SHAPES and pos.shape == (1, 340, 32) and ref.shape == (3, 340, 2)
    torch.testing.assert_close(pos[0, 256:320], sine_position_encoding(8, 8, 32, "cpu") + level_embed[1])
    torch.testing.assert_close(ref[2], pixel_reference_points(SHAPES, "cpu"))


@pytest.mark.parametrize("use_cia, use_msfe_csf", [(False, False), (True, False), (False, True), (True, True)])
def test_decoder_ablation_variants(use_cia, use_msfe_csf):
    cfg = CSSFormerConfig(dim=32, n_heads=4, n_points=2, ffn_dim=64, csf_heads=4, csf_sr_ratios=(4, 2, 1, 1),
                          use_cia=use_cia, use_msfe_csf=use_msfe_csf)
    decoder = CSSFormerDecoder(CHANNELS, 5, cfg)
    assert (decoder.cia is not None) == use_cia
    assert (decoder.msfe is not None) == (decoder.csf is not None) == use_msfe_csf
    assert decoder(_pyramid()).shape == (2, 5, 16, 16)


def test_decoder_rejects_wrong_channel_counts():
    cfg = CSSFormerConfig(dim=32, n_heads=4, n_points=2, ffn_dim=64, csf_heads=4, csf_sr_ratios=(4, 2, 1, 1))
    decoder = CSSFormerDecoder(CHANNELS, 5, cfg)
    with pytest.raises(ValueError, match=r"features\[1\]: got shape \(2, 17, 8, 8\), expected \(N, 16, H, W\)"):
        decoder(_pyramid(channels=[8, 17, 32, 64]))
    with pytest.raises(ValueError, match="features: got 3 levels, expected 4"):
        decoder(_pyramid()[:3])
