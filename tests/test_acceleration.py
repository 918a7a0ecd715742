"""The fast path's switches on the CPU: channels-last and torch.compile change how the step runs, not its result."""

import copy
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
from seeding import mini_networks


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


def test_channels_last_is_applied_on_cuda_only(tiny_nets):
    nets = SimpleNamespace(generator=copy.deepcopy(tiny_nets.generator), identity=copy.deepcopy(tiny_nets.identity),
                           extra={}, device=torch.device("cpu"))
    accelerate_networks_(nets, channels_last=True)
    assert all(w.is_contiguous() for w in _conv_weights(nets.identity))  # CPU: left as it was
    assert nets.generator.input.input.is_contiguous()
    assert convolutional_networks(nets) == [nets.generator, nets.identity]


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
    torch.testing.assert_close(g1, g0, atol=1e-5, rtol=1e-3)


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
    params = load_params("tiny", **{"optimization.steps": 3}).optimization
    w_real = broadcast_ws(torch.from_numpy(sample_fake_pool(g, 2, 1000, 0.7).w), g.num_ws)
    w_fake = torch.from_numpy(sample_fake_pool(g, 2, 2000, 0.7).w)
    with torch.no_grad():
        images = g.synthesis(w_real)

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
