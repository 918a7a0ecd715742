"""Tests for anon_core.networks.arcface (IR-SE50 identity encoder, TreB1eN / pSp layout)."""

from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F

from anon_core.networks.arcface import ArcFaceEncoder, IRSEConfig
from seeding import fill_deterministic_, seeded_images

TINY = IRSEConfig(stage_channels=(16, 32, 64, 128), stage_blocks=(1, 1, 1, 1), embedding_dim=128)


@pytest.fixture
def tiny() -> ArcFaceEncoder:
    torch.manual_seed(0)
    model = ArcFaceEncoder(TINY)
    fill_deterministic_(model, 1)  # non-trivial BatchNorm statistics, so eval mode is really exercised
    return model.eval()


def test_shapes_finite_unit_norm(tiny: ArcFaceEncoder) -> None:
    for size in (128, 256, 512):  # smaller than, equal to and larger than pSp's 256 px
        embedding = tiny(seeded_images(2, size, seed=size))
        assert embedding.shape == (2, TINY.embedding_dim)
        assert torch.isfinite(embedding).all()
        assert torch.allclose(embedding.norm(dim=1), torch.ones(2), atol=1e-5)
        assert (embedding[0] - embedding[1]).abs().max() > 1e-4


def test_batch_equals_single(tiny: ArcFaceEncoder) -> None:
    images = seeded_images(4, 256, seed=3)
    with torch.no_grad():
        batch = tiny(images)
        singles = torch.cat([tiny(images[i : i + 1]) for i in range(4)])
    assert torch.allclose(batch, singles, atol=1e-5)


def test_gradients_reach_input_and_every_parameter(tiny: ArcFaceEncoder) -> None:
    images = seeded_images(2, 256, seed=4).requires_grad_(True)
    target = F.normalize(torch.randn(2, TINY.embedding_dim, generator=torch.Generator().manual_seed(0)), dim=1)
    (tiny(images) * target).sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    assert images.grad.abs().sum() > 0
    for name, parameter in tiny.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name


def test_prepare_sizes_and_area_pooling(tiny: ArcFaceEncoder) -> None:
    big = seeded_images(1, 1024, seed=5)
    prepared = tiny.prepare(big)
    assert prepared.shape == (1, 3, 112, 112)
    # Larger inputs are area-pooled to 256 (pSp's AdaptiveAvgPool2d): 1024 px -> exact 4x4 box averages.
    torch.testing.assert_close(prepared, tiny.prepare(F.avg_pool2d(big, 4)), rtol=0, atol=1e-6)
    assert tiny.prepare(seeded_images(1, 64, seed=6)).shape == (1, 3, 112, 112)


@pytest.mark.parametrize("size", [256, 512])
def test_only_the_psp_crop_box_is_seen(tiny: ArcFaceEncoder, size: int) -> None:
    # pSp criteria/id_loss.py: x[:, :, 35:223, 32:220] on the 256 px image (rows, then columns).
    scale = size // 256
    top, bottom, left, right = (c * scale for c in (35, 223, 32, 220))
    inside = torch.zeros(1, 3, size, size, dtype=torch.bool)
    inside[:, :, top:bottom, left:right] = True
    noise = seeded_images(1, size, seed=7)
    blank = torch.zeros(1, 3, size, size)
    with torch.no_grad():
        reference = tiny(blank)
        outside_only = tiny(torch.where(inside, blank, noise))
        inside_only = tiny(torch.where(inside, noise, blank))
    torch.testing.assert_close(outside_only, reference, rtol=0, atol=1e-6)
    assert (inside_only - reference).abs().max() > 1e-3  # the box itself does matter


def test_rejects_bad_input_and_config(tiny: ArcFaceEncoder) -> None:
    with pytest.raises(ValueError, match=r"\(1, 3, 256, 200\)"):
        tiny(torch.zeros(1, 3, 256, 200))
    with pytest.raises(ValueError, match="input_size=100"):
        IRSEConfig(input_size=100)
    with pytest.raises(ValueError, match="se_reduction"):
        IRSEConfig(stage_channels=(8, 16, 32, 64), stage_blocks=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="equal length"):
        IRSEConfig(stage_channels=(64, 128), stage_blocks=(1, 1, 1))


def test_full_size_matches_ir_se50_layout() -> None:
    with torch.device("meta"):  # shapes only
        model = ArcFaceEncoder(IRSEConfig())
    state = model.state_dict()
    # Recorded from TreB1eN/InsightFace_Pytorch model.py Backbone(50, 0.6, 'ir_se') (identical to pSp's
    # models/encoders/model_irse.py Backbone(112, 50, 'ir_se', 0.6)): 43,797,696 parameters, 397 state entries,
    # sha256 of the sorted "key [shape]" lines below.
    assert sum(p.numel() for p in model.parameters()) == 43_797_696
    assert len(state) == 397
    lines = "\n".join(f"{k} {list(v.shape)}" for k, v in sorted(state.items()))
    assert hashlib.sha256(lines.encode()).hexdigest() == (
        "b0af237e50fcbd3695cab906344e888f175c07643136c292649a58fb985fcfef"
    )
    assert len(model.body) == 24
    assert "body.0.shortcut_layer.0.weight" not in state  # 64 -> 64: MaxPool2d(1, 2), no parameters
    assert state["body.3.shortcut_layer.0.weight"].shape == (128, 64, 1, 1)
    assert state["body.0.res_layer.5.fc1.weight"].shape == (4, 64, 1, 1)
    assert state["output_layer.3.weight"].shape == (512, 512 * 7 * 7)
    assert state["output_layer.4.running_var"].shape == (512,)


def test_matches_reference_ir_se50_outputs() -> None:
    """Full IR-SE50 against numbers recorded from TreB1eN's Backbone(50, 0.6, 'ir_se') (commit 016916f3).

    Recorded by loading `fill_deterministic_(·, 0)` weights into the reference in eval mode and running pSp's
    IDLoss.extract_feats on x = `seeded_images(2, 256, seed=1)`: x[:, :, 35:223, 32:220], AdaptiveAvgPool2d(112),
    Backbone. The port matched it to 0.0 max abs difference (and on 1024 px input through pSp's 256 px pool).
    """
    with torch.device("meta"):  # skip the default init; every entry is overwritten below
        model = ArcFaceEncoder(IRSEConfig())
    model = model.to_empty(device="cpu")
    fill_deterministic_(model, 0)
    model.eval()
    with torch.no_grad():
        embedding = model(seeded_images(2, 256, seed=1))
    p = torch.randn(512, 4, generator=torch.Generator().manual_seed(2))
    ref_head = torch.tensor(
        [[-0.012418674305081367, 0.008230808191001415, -0.037191133946180344, -0.15672741830348969],
         [-0.02945517562329769, 0.01974158175289631, -0.030688028782606125, -0.16006775200366974]]
    )
    ref_p = torch.tensor(
        [[-1.0565506219863892, 0.2916002869606018, 1.4492286443710327, -2.079296588897705],
         [-0.7761749029159546, -0.3112916350364685, 1.6474010944366455, -1.879453182220459]]
    )
    torch.testing.assert_close(embedding[:, :4], ref_head, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(embedding @ p, ref_p, rtol=1e-4, atol=1e-4)
