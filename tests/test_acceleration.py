"""The fast path's switches on the CPU: channels-last and torch.compile change how the step runs, not its result."""

import copy
import dataclasses
import os
from types import SimpleNamespace

import pytest
import torch

from anon_core.acceleration import (
    accelerate_networks_,
    channels_last_,
    convolutional_networks,
    prefer_expandable_cuda_memory,
    resolve_amp,
)
from anon_core.fake_pool import broadcast_ws, sample_fake_pool
from anon_core.optimize import anonymize_batch
from anon_core.params import load_params
from seeding import mini_networks, mini_step_inputs


def _conv_weights(module):
    return [m.weight for m in module.modules() if isinstance(m, torch.nn.Conv2d)]


def test_channels_last_identity_network_gives_the_same_embeddings_and_gradients(tiny_nets, lfw_tensor):
    default = tiny_nets.identity
    fast = channels_last_(copy.deepcopy(default))
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in _conv_weights(fast))
    outputs = []
    for net in (default, fast):
        x = lfw_tensor[:4].clone().requires_grad_(True)
        embedding = net(x)
        embedding[:, :8].sum().backward()
        outputs.append((embedding.detach(), x.grad))
    (e0, g0), (e1, g1) = outputs
    torch.testing.assert_close(e1, e0, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(g1, g0, atol=1e-6, rtol=1e-3)


def _copied_nets(tiny_nets) -> SimpleNamespace:
    return SimpleNamespace(generator=copy.deepcopy(tiny_nets.generator), identity=copy.deepcopy(tiny_nets.identity),
                           farl=copy.deepcopy(tiny_nets.farl), extra={}, device=torch.device("cpu"))


def test_channels_last_is_applied_on_cuda_only(tiny_nets):
    nets = _copied_nets(tiny_nets)
    accelerate_networks_(nets, load_params("tiny").speed)
    assert all(w.is_contiguous() for w in _conv_weights(nets.identity))  # CPU: left as it was
    assert nets.generator.input.input.is_contiguous()
    assert convolutional_networks(nets) == [nets.generator, nets.identity]


def test_speed_settings_pick_the_forms_and_regional_compilation(tiny_nets):
    from anon_core.networks.stylegan2 import ModulatedConv2d

    nets = _copied_nets(tiny_nets)
    convs = [m for m in nets.generator.modules() if isinstance(m, ModulatedConv2d)]
    speed = load_params("tiny", **{"speed.upsample_form": "polyphase", "speed.resize_form": "matmul",
                                   "speed.compile_blocks": True}).speed
    accelerate_networks_(nets, speed)
    assert {c.up_form for c in convs} == {"polyphase"} and nets.farl.resize_form == "matmul"
    compiled = [m for net in (nets.generator, nets.farl) for m in net.modules() if "forward" in vars(m)]
    assert len(compiled) > 5  # the styled convs, ToRGBs and attention blocks run compiled
    accelerate_networks_(nets, dataclasses.replace(speed, compile=True))  # the whole step compiles instead
    assert not any("forward" in vars(m) for net in (nets.generator, nets.farl) for m in net.modules())
    accelerate_networks_(nets, load_params("tiny").speed)  # the defaults put everything back
    assert {c.up_form for c in convs} == {"transposed"} and nets.farl.resize_form == "interpolate"


def test_resize_form_auto_is_the_matrices_on_cuda_and_the_reference_op_elsewhere(tiny_nets):
    """params.yaml's default (`resize_form: auto`): an H200 measured the matrices 1.06x the whole step, the CPU 0.80x
    for FaRL's resize alone."""
    assert load_params("tiny").speed.resize_form == "auto"
    nets = _copied_nets(tiny_nets)
    accelerate_networks_(nets, load_params("tiny").speed)
    assert nets.farl.resize_form == "interpolate"
    # the networks stay on the CPU: only the device they are said to be on decides the form
    accelerate_networks_(SimpleNamespace(**{**vars(nets), "device": torch.device("cuda")}), load_params("tiny").speed)
    assert nets.farl.resize_form == "matmul"
    accelerate_networks_(nets, load_params("tiny", **{"speed.resize_form": "interpolate"}).speed)
    assert nets.farl.resize_form == "interpolate"


def test_unknown_forms_in_params_are_refused_with_their_choices():
    from anon_core.errors import ParamsError

    with pytest.raises(ParamsError, match=r"speed.upsample_form = 'bilinear' must be one of \('transposed', "):
        load_params("tiny", **{"speed.upsample_form": "bilinear"})
    with pytest.raises(ParamsError, match=r"speed.resize_form = 'area' must be one of"):
        load_params("tiny", **{"speed.resize_form": "area"})


def test_channels_last_generator_gives_the_same_images_and_code_gradients(tiny_nets):
    # the constant input and noise maps carry the layout through the batched convolutions
    default = tiny_nets.generator
    fast = channels_last_(copy.deepcopy(default))
    assert fast.input.input.is_contiguous(memory_format=torch.channels_last)
    layouts, outputs = [], []
    fast.convs[-1].register_forward_hook(
        lambda module, args, out: layouts.append(out.is_contiguous(memory_format=torch.channels_last)))
    w = broadcast_ws(torch.from_numpy(sample_fake_pool(default, 3, seed=7, psi=0.7).w), default.num_ws)
    for g in (default, fast):
        ws = w.clone().requires_grad_(True)
        image = g.synthesis(ws)
        image[:, :, ::3].sum().backward()
        outputs.append((image.detach(), ws.grad))
    assert layouts == [True]  # the last feature map is still channels-last
    (i0, g0), (i1, g1) = outputs
    torch.testing.assert_close(i1, i0, atol=1e-5, rtol=1e-4)
    # Gradients reach 500 here: the channels-last convolutions sum in another order, so a gradient that is a near-zero
    # difference of large terms differs by float32 noise of that scale (2.5e-5 on an AMD EPYC, where 1e-5 failed)
    torch.testing.assert_close(g1, g0, atol=1e-6 * float(g0.abs().max()), rtol=1e-3)


def test_amp_modes_resolve_per_device():
    assert resolve_amp("auto", "cpu") is None and resolve_amp("auto", "cuda") is torch.bfloat16
    assert resolve_amp("bf16", "cpu") is torch.bfloat16 and resolve_amp("off", "cuda") is None
    with pytest.raises(ValueError, match="fp16"):
        resolve_amp("fp16", "cpu")


@pytest.mark.skipif(not torch._dynamo.is_dynamo_supported(), reason="torch.compile is not supported here")
def test_compiled_step_gives_the_eager_result():
    # "aot_eager" traces the step's forward and backward graphs as torch.compile does and runs them with the eager
    # kernels; inductor's code generation takes minutes on this CPU and is exercised by bench/gpu_anonymize.py.
    g, identity, farl = mini_networks()
    params, w_real, w_fake, images = mini_step_inputs(g)

    def run(backend):
        return anonymize_batch(g, identity, farl, images, w_real, w_fake, params, compile_backend=backend)

    eager, compiled = run(None), run("aot_eager")
    start, stop = params.layer_start, params.layer_stop
    moved = (eager.ws[:, start:stop] - w_fake[:, None]).abs().amax()
    assert moved > 1e-4  # the steps moved the codes, so the comparison means something
    torch.testing.assert_close(compiled.ws, eager.ws, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.from_numpy(compiled.history["total"]), torch.from_numpy(eager.history["total"]))


def test_cuda_memory_is_expandable_unless_the_user_configured_the_allocator(monkeypatch):
    for name in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"):
        monkeypatch.setenv(name, "")  # recorded, so the variable the function sets is undone after the test
        monkeypatch.delenv(name)
    prefer_expandable_cuda_memory()
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:128")
    prefer_expandable_cuda_memory()
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:128"
    # the newer name, which the CUDA allocator reads only when the old one is unset
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF")
    monkeypatch.setenv("PYTORCH_ALLOC_CONF", "backend:cudaMallocAsync")
    prefer_expandable_cuda_memory()
    assert "PYTORCH_CUDA_ALLOC_CONF" not in os.environ


def _images_and_code_gradients(g, identity, farl, ws):
    ws = ws.detach().clone().requires_grad_(True)
    image = g.synthesis(ws)
    loss = identity(image).square().sum() + farl(image)[1].square().mean() + image[:, :, ::5].sum()
    loss.backward()
    return image.detach(), ws.grad


@pytest.mark.skipif(not torch._dynamo.is_dynamo_supported(), reason="torch.compile is not supported here")
def test_compiled_blocks_give_the_eager_result_and_compile_once_per_shape():
    from torch._dynamo.utils import counters

    from anon_core.acceleration import REPEATED_BLOCKS, compile_blocks_

    nets = mini_networks()
    g, identity, farl = nets
    ws = torch.randn(3, g.num_ws, g.config.w_dim, generator=torch.Generator().manual_seed(1))
    eager = _images_and_code_gradients(*nets, ws)
    blocks = sum(compile_blocks_(net, "aot_eager") for net in nets)
    assert blocks == sum(isinstance(m, REPEATED_BLOCKS) for net in nets for m in net.modules()) > 10
    counters.clear()
    compiled = _images_and_code_gradients(*nets, ws)
    graphs = counters["stats"]["unique_graphs"]
    assert 0 < graphs <= 12  # a few graphs per block type (shapes), not one per block
    again = _images_and_code_gradients(*nets, ws)
    assert counters["stats"]["unique_graphs"] == graphs  # the next step reuses them: no compilation per step
    for got in (compiled, again):
        torch.testing.assert_close(got[0], eager[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[1], eager[1], atol=1e-5, rtol=1e-4)
    for net in nets:
        compile_blocks_(net, None)
    assert not any("forward" in vars(m) for net in nets for m in net.modules())  # eager again


def test_a_copy_of_compiled_blocks_runs_its_own_weights():
    from anon_core.acceleration import compile_blocks_

    g = mini_networks()[0]
    compile_blocks_(g, "eager")
    twin = copy.deepcopy(g)
    with torch.no_grad():
        for p in twin.convs.parameters():
            p.mul_(1.5)
    ws = torch.randn(2, g.num_ws, g.config.w_dim, generator=torch.Generator().manual_seed(2))
    compile_blocks_(g, None)
    with torch.no_grad():
        assert not torch.allclose(twin.synthesis(ws), g.synthesis(ws))  # the copy's blocks use the copy's weights
        compile_blocks_(twin, None)
        expected = twin.synthesis(ws)
        compile_blocks_(twin, "eager")
        torch.testing.assert_close(twin.synthesis(ws), expected)


@pytest.mark.skipif(not torch._dynamo.is_dynamo_supported(), reason="torch.compile is not supported here")
def test_compiled_blocks_run_the_whole_optimization_compiled_under_bf16(caplog):
    """Every variant a block meets in a bf16 step (float32 constant input, layers with and without gradients,
    the final no-grad synthesis) stays compiled: torch.compile's default limit of 8 graphs per function would
    silently run the rest eagerly."""
    from anon_core.acceleration import compile_blocks_

    g, identity, farl = mini_networks()
    params, w_real, w_fake, images = mini_step_inputs(g)

    def run():
        return anonymize_batch(g, identity, farl, images, w_real, w_fake, params, amp_dtype=torch.bfloat16)

    eager = run()
    for net in (g, identity, farl):
        compile_blocks_(net, "aot_eager")
    try:
        with caplog.at_level("WARNING", logger="torch._dynamo"):
            compiled = run()
    finally:
        for net in (g, identity, farl):
            compile_blocks_(net, None)
    assert "recompile_limit" not in caplog.text
    # the traced graphs round bf16 intermediates at other points than the eager ops (exactness is the float32
    # test's job): the losses agree as closely as bf16 runs of a few steps do (up to 5.5% on an AMD EPYC, within 2%
    # on the CPUs of earlier sessions; what this checks is that no block falls out of the compiled graphs)
    for name in ("identity", "attribute", "total"):
        torch.testing.assert_close(torch.from_numpy(compiled.history[name]), torch.from_numpy(eager.history[name]),
                                   rtol=0.1, atol=1e-3)


def test_the_generator_compiles_as_one_graph_under_autocast(monkeypatch):
    """The float32 islands (demodulation energies, the blur-folded up-sampling weights) turn autocast off; the check
    whether a device has autocast made a graph break in each under torch 2.11's dynamo, which could not trace it, and
    the compiled step recompiled until it ran 10x slower than eager (an H200). A check dynamo must not trace stands in
    for it here: one graph, or `fullgraph` fails."""
    from anon_core.networks.stylegan2 import Generator, StyleGAN2Config

    monkeypatch.setattr(torch.amp, "is_autocast_available", torch._dynamo.disable(torch.amp.is_autocast_available))
    torch.manual_seed(0)
    g = Generator(StyleGAN2Config(resolution=32, z_dim=16, w_dim=16, mapping_layers=1, channel_max=16))
    g = g.eval().requires_grad_(False)
    ws = torch.randn(2, g.num_ws, 16)

    def synthesis(ws):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return g.synthesis(ws)

    torch._dynamo.reset()
    compiled = torch.compile(synthesis, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(ws), synthesis(ws), atol=0, rtol=0)
