"""Seeded weights and inputs shared by the network tests (the parity fixtures were recorded with these)."""

import numpy as np
import torch


def fill_deterministic_(module: torch.nn.Module, seed: int) -> None:
    """Overwrite every floating-point state entry from a seeded generator, in sorted key order.

    Independent of the module's own init, so the same weights can be loaded into the reference code.
    """
    generator = torch.Generator().manual_seed(seed)
    values = {}
    for name, tensor in sorted(module.state_dict().items()):
        if not tensor.is_floating_point():  # BatchNorm's num_batches_tracked
            values[name] = torch.zeros_like(tensor)
            continue
        noise = torch.randn(tensor.shape, generator=generator)
        if tensor.ndim >= 2:
            values[name] = noise / tensor[0].numel() ** 0.5
        elif name.endswith("running_var"):
            values[name] = 1 + 0.25 * noise.abs()
        elif name.endswith("weight"):
            values[name] = 0.75 + 0.25 * noise
        else:
            values[name] = 0.1 * noise
    module.load_state_dict(values)


def seeded_images(batch: int, size: int, seed: int) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def seeded_state_dict(keys_shapes: list[tuple[str, list[int]]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Fill every key from one seeded generator in sorted key order (the rule the fixtures were recorded with)."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in sorted(keys_shapes):
        if name.endswith("num_batches_tracked"):
            out[name] = torch.zeros(shape, dtype=torch.long)
            continue
        noise = torch.randn(shape, generator=generator)
        if len(shape) >= 2:
            out[name] = noise / float(np.prod(shape[1:])) ** 0.5
        elif name.endswith("running_var"):
            out[name] = 1 + 0.25 * noise.abs()
        elif name.endswith("running_mean"):
            out[name] = 0.1 * noise
        elif name.endswith("weight"):
            out[name] = 0.75 + 0.25 * noise
        else:
            out[name] = 0.1 * noise
    return out


def mini_networks() -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """(generator, identity, attribute) networks of the method's architectures (StyleGAN2, IR-SE, FaRL ViT) at
    about the smallest sizes they take, seeded and frozen: for tests of the optimization's machinery whose cost
    grows with the graphs (tracing, memory probes), independent of any profile."""
    from anon_core.networks.arcface import ArcFaceEncoder, IRSEConfig
    from anon_core.networks.farl import FaRLEncoder, ViTConfig
    from anon_core.networks.stylegan2 import Generator, StyleGAN2Config

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        g = Generator(StyleGAN2Config(resolution=32, z_dim=16, w_dim=16, mapping_layers=1, channel_max=16))
        identity = ArcFaceEncoder(IRSEConfig(stage_channels=(16, 16), stage_blocks=(1, 1), embedding_dim=16,
                                             input_size=32))
        farl = FaRLEncoder(ViTConfig(input_resolution=32, patch_size=8, width=32, layers=1, heads=2, output_dim=16))
    return tuple(net.eval().requires_grad_(False) for net in (g, identity, farl))


def seeded_codes(g: torch.nn.Module, first_seed: int, n: int, psi: float = 0.7):
    """W codes [n, w_dim] float32 (numpy) of z drawn from the torch seeds first_seed, first_seed + 1, ..., mapped and
    truncated as the fake pool's are: fixed test inputs whatever the pool's seeding (`anon_core.fake_pool.pool_seeds`).
    The tests that compare two ways of running the optimization were tuned on them: Adam's first steps move each
    code by lr * sign(gradient), which float rounding flips where a gradient is near 0."""
    from anon_core.fake_pool import sample_z

    z = sample_z(np.arange(first_seed, first_seed + n), g.config.z_dim)
    with torch.no_grad():
        return g.truncate(g.mapping(z), psi).float().cpu().numpy()


def mini_step_inputs(g: torch.nn.Module, batch: int = 2, steps: int = 3):
    """(optimization params of `steps` steps, w_real [B, num_ws, w_dim], w_fake [B, w_dim], real images) for `g`:
    real and fake codes `seeded_codes` 1000 and 2000, the real images synthesized from their codes."""
    from anon_core.fake_pool import broadcast_ws
    from anon_core.params import load_params

    params = load_params("tiny", **{"optimization.steps": steps}).optimization
    w_real = broadcast_ws(torch.from_numpy(seeded_codes(g, 1000, batch)), g.num_ws)
    w_fake = torch.from_numpy(seeded_codes(g, 2000, batch))
    with torch.no_grad():
        images = g.synthesis(w_real)
    return params, w_real, w_fake, images
