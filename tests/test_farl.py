"""Tests for anon_core.networks.farl (the CLIP ViT-B/16 visual tower FaRL uses)."""

from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F

from anon_core.networks.farl import CLIP_MEAN, CLIP_STD, FaRLEncoder, ViTConfig
from seeding import fill_deterministic_, seeded_images

TINY = ViTConfig(input_resolution=32, patch_size=8, width=32, layers=2, heads=4, output_dim=16)


@pytest.fixture
def tiny() -> FaRLEncoder:
    torch.manual_seed(0)
    return FaRLEncoder(TINY).eval()


def test_shapes_finite_and_nondegenerate(tiny: FaRLEncoder) -> None:
    embedding, tokens = tiny(seeded_images(3, 48, seed=1))  # 48 px: exercises the resize to 32
    assert embedding.shape == (3, TINY.output_dim)
    assert tokens.shape == (3, 1 + TINY.grid**2, TINY.width)
    assert torch.isfinite(embedding).all() and torch.isfinite(tokens).all()
    # Seeded init must give distinct tokens and distinct images distinct embeddings.
    assert tokens.std(dim=1).mean() > 0.1
    assert (embedding[0] - embedding[1]).abs().max() > 1e-3


def test_embed_is_unit_norm_projection(tiny: FaRLEncoder) -> None:
    images = seeded_images(3, 32, seed=2)
    unit = tiny.embed(images)
    assert torch.allclose(unit.norm(dim=-1), torch.ones(3), atol=1e-5)
    raw, _ = tiny(images)
    assert torch.allclose(unit, raw / raw.norm(dim=-1, keepdim=True), atol=1e-6)


def test_batch_equals_single(tiny: FaRLEncoder) -> None:
    images = seeded_images(4, 40, seed=3)
    with torch.no_grad():
        embedding, tokens = tiny(images)
        singles = [tiny(images[i : i + 1]) for i in range(4)]
    assert torch.allclose(embedding, torch.cat([s[0] for s in singles]), atol=1e-5)
    assert torch.allclose(tokens, torch.cat([s[1] for s in singles]), atol=1e-5)


def test_gradients_reach_input_and_every_parameter(tiny: FaRLEncoder) -> None:
    images = seeded_images(2, 48, seed=4).requires_grad_(True)
    embedding, tokens = tiny(images)
    (embedding.square().sum() + tokens.abs().mean()).backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    assert images.grad.abs().sum() > 0
    for name, parameter in tiny.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name


def test_preprocess_range_normalization_and_size(tiny: FaRLEncoder) -> None:
    # A constant grey in [-1, 1] maps to ((v + 1) / 2 - mean) / std at any input size (bicubic keeps constants).
    for size in (16, 32, 80):
        out = tiny.preprocess(torch.full((1, 3, size, size), 0.2))
        assert out.shape == (1, 3, 32, 32)
        expected = (0.6 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
        assert torch.allclose(out, expected.view(1, 3, 1, 1).expand_as(out), atol=1e-5)


def test_preprocess_antialiases_when_shrinking(tiny: FaRLEncoder) -> None:
    # White noise shrunk 4x: an antialiased filter averages ~16 px per side, plain bicubic only 4.
    noise = seeded_images(1, 128, seed=5)
    ours = tiny.preprocess(noise) * tiny.std + tiny.mean  # back to [0, 1]
    plain = F.interpolate((noise + 1) / 2, size=(32, 32), mode="bicubic", align_corners=False)
    assert ours.std() < 0.3 * plain.std()


def test_normalization_buffers_stay_out_of_the_state_dict(tiny: FaRLEncoder) -> None:
    assert "mean" not in tiny.state_dict() and "std" not in tiny.state_dict()
    assert dict(tiny.named_buffers()).keys() == {"mean", "std"}


def test_rejects_non_square_or_non_rgb(tiny: FaRLEncoder) -> None:
    with pytest.raises(ValueError, match=r"\(1, 3, 32, 40\)"):
        tiny(torch.zeros(1, 3, 32, 40))
    with pytest.raises(ValueError, match="square RGB"):
        tiny(torch.zeros(1, 1, 32, 32))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="patch_size=7"):
        ViTConfig(input_resolution=32, patch_size=7)
    with pytest.raises(ValueError, match="heads=5"):
        ViTConfig(width=32, heads=5)


def _expected_vit_b16_shapes() -> dict[str, tuple[int, ...]]:
    """openai/CLIP ViT-B/16 `visual.*` state dict with the prefix removed (152 entries)."""
    width, layers, grid = 768, 12, 14
    shapes: dict[str, tuple[int, ...]] = {
        "class_embedding": (width,),
        "positional_embedding": (1 + grid**2, width),
        "proj": (width, 512),
        "conv1.weight": (width, 3, 16, 16),
        "ln_pre.weight": (width,),
        "ln_pre.bias": (width,),
        "ln_post.weight": (width,),
        "ln_post.bias": (width,),
    }
    for n in range(layers):
        block = f"transformer.resblocks.{n}."
        shapes |= {
            block + "attn.in_proj_weight": (3 * width, width),
            block + "attn.in_proj_bias": (3 * width,),
            block + "attn.out_proj.weight": (width, width),
            block + "attn.out_proj.bias": (width,),
            block + "ln_1.weight": (width,),
            block + "ln_1.bias": (width,),
            block + "mlp.c_fc.weight": (4 * width, width),
            block + "mlp.c_fc.bias": (4 * width,),
            block + "mlp.c_proj.weight": (width, 4 * width),
            block + "mlp.c_proj.bias": (width,),
            block + "ln_2.weight": (width,),
            block + "ln_2.bias": (width,),
        }
    return shapes


def test_full_size_state_dict_matches_clip_vit_b16() -> None:
    with torch.device("meta"):  # shapes only: no 86 M-parameter allocation
        model = FaRLEncoder(ViTConfig())
    state = model.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == _expected_vit_b16_shapes()
    # Recorded from openai/CLIP clip/model.py (commit 0845fc46) VisionTransformer(224, 16, 768, 12, 12, 512):
    # 86,192,640 parameters; sha256 of its sorted "key [shape]" lines below.
    assert sum(p.numel() for p in model.parameters()) == 86_192_640
    lines = "\n".join(f"{k} {list(v.shape)}" for k, v in sorted(state.items()))
    assert hashlib.sha256(lines.encode()).hexdigest() == (
        "f57ddfd9d06e8b368686955a18f30b1da9b2c0ec4a1d05fc110932979ddd6f5c"
    )


def test_matches_reference_clip_outputs() -> None:
    """Outputs against numbers recorded from openai/CLIP clip/model.py (commit 0845fc46).

    Recorded by loading `fill_deterministic_(·, 0)` weights into the reference VisionTransformer(32, 8, 32, 2, 4,
    16), feeding it ((x + 1) / 2 - CLIP_MEAN) / CLIP_STD for x = `seeded_images(2, 32, seed=1)`, and taking its embedding
    and the transformer output before ln_post (as FALCO's `AttrLoss.extract_visual`). The port matched the
    reference to 0.0 max abs difference there and at full ViT-B/16 size on 224 px input.
    """
    model = FaRLEncoder(TINY).eval()
    fill_deterministic_(model, 0)
    with torch.no_grad():
        embedding, tokens = model(seeded_images(2, 32, seed=1))
    p = torch.randn(TINY.output_dim, 4, generator=torch.Generator().manual_seed(2))
    q = torch.randn(TINY.width, 4, generator=torch.Generator().manual_seed(3))
    ref_embedding_head = torch.tensor(
        [[0.2029847353696823, 0.9391481280326843, 0.5938512086868286, 0.07088268548250198],
         [0.2654912769794464, 0.9752949476242065, -0.30303776264190674, 0.7486346364021301]]
    )
    ref_embedding_p = torch.tensor(
        [[-2.3511483669281006, 2.2542927265167236, -4.181697845458984, -9.008002281188965],
         [-1.0914421081542969, -0.24695484340190887, -1.6372877359390259, -10.687464714050293]]
    )
    ref_tokens_q = torch.tensor(
        [[15.577033042907715, 9.454919815063477, -19.066558837890625, -59.32889938354492],
         [-47.6441764831543, 6.750372886657715, -71.0029525756836, -66.56563568115234]]
    )
    torch.testing.assert_close(embedding[:, :4], ref_embedding_head, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(embedding @ p, ref_embedding_p, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close((tokens @ q).sum(dim=1), ref_tokens_q, rtol=1e-4, atol=1e-3)
