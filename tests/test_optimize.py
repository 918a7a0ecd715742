"""The latent optimization: batching, frozen layers, and that both loss terms do what the paper says."""

import copy
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from anon_core.fake_pool import broadcast_ws
from anon_core.optimize import anonymize_batch, attribute_loss, identity_loss
from anon_core.params import load_params
from seeding import seeded_codes


def _setup(nets, n=4, **overrides):
    params = load_params("tiny", **overrides).optimization
    g = nets.generator
    w_real = broadcast_ws(torch.from_numpy(seeded_codes(g, 1000, n)), g.num_ws)
    with torch.no_grad():
        images = g.synthesis(w_real)
    return params, images, w_real, torch.from_numpy(seeded_codes(g, 2000, n))


def _run(nets, params, images, w_real, w_fake):
    return anonymize_batch(nets.generator, nets.identity, nets.farl, images, w_real, w_fake, params)


def test_batch_of_four_equals_four_single_runs(tiny_nets):
    # float64: in float32, batched and single convolutions differ by ~1e-7 (different kernels), and Adam's
    # per-element normalization turns that into ~1e-4 on elements whose gradient is near zero. In float64 that
    # noise vanishes and what is left is the method: no image's update depends on another image.
    nets = SimpleNamespace(**{k: copy.deepcopy(getattr(tiny_nets, k)).double() for k in ("generator", "identity", "farl")})
    params, images, w_real, w_fake = _setup(tiny_nets, **{"optimization.steps": 8})
    images, w_real, w_fake = images.double(), w_real.double(), w_fake.double()
    batched = _run(nets, params, images, w_real, w_fake)
    for i in range(4):
        single = _run(nets, params, images[i : i + 1], w_real[i : i + 1], w_fake[i : i + 1])
        torch.testing.assert_close(batched.ws[i : i + 1], single.ws, atol=1e-5, rtol=0)
        np.testing.assert_allclose(batched.history["total"][:, i], single.history["total"][:, 0], rtol=1e-6)


def test_layers_outside_the_trainable_range_stay_at_the_inversion(tiny_nets):
    params, images, w_real, w_fake = _setup(tiny_nets, **{"optimization.steps": 5})
    result = _run(tiny_nets, params, images, w_real, w_fake)
    s, e = params.layer_start, params.layer_stop
    assert torch.equal(result.ws[:, :s], w_real[:, :s])
    assert torch.equal(result.ws[:, e:], w_real[:, e:])
    moved = (result.ws[:, s:e] - w_fake[:, None]).abs().amax()
    assert moved > 1e-4, "the trainable layers never left the fake's code"


def test_total_loss_goes_down(tiny_nets):
    params, images, w_real, w_fake = _setup(tiny_nets, **{"optimization.steps": 30, "optimization.lr": 0.05})
    history = _run(tiny_nets, params, images, w_real, w_fake).history["total"].sum(axis=1)
    assert history[-5:].mean() < 0.9 * history[:3].mean()


def test_zero_margin_drives_identity_similarity_toward_zero(tiny_nets):
    # Identity term alone, so the move is that term's doing. tiny's identity network is dlib's trained
    # descriptor, whose unit vectors of tiny's (non-face) images all start within a narrow cone of the sources'
    # (cos ~0.99), so the test asks for the gap 1 - cos to grow severalfold (measured: 0.011 -> 0.073).
    params, images, w_real, w_fake = _setup(
        tiny_nets, **{"optimization.steps": 40, "optimization.lr": 0.05, "optimization.lambda_attr": 0.0}
    )
    result = _run(tiny_nets, params, images, w_real, w_fake)
    initial = result.history["identity"][0] / params.lambda_id  # |cos| before the first update
    final = np.abs(result.identity_similarity)
    assert np.all(final < initial), (initial, final)
    assert (1 - final).mean() > 3 * (1 - initial).mean(), (initial, final)


def test_margin_one_keeps_identity_closer_than_margin_zero(tiny_nets):
    kw = {"optimization.steps": 30, "optimization.lr": 0.05, "optimization.lambda_attr": 0.0}
    p0, images, w_real, w_fake = _setup(tiny_nets, **kw)
    p1 = load_params("tiny", **kw, **{"optimization.margin": 1.0}).optimization
    s0 = _run(tiny_nets, p0, images, w_real, w_fake).identity_similarity
    s1 = _run(tiny_nets, p1, images, w_real, w_fake).identity_similarity
    assert np.all(s1 > s0)


def test_loss_terms_match_their_definitions():
    a = torch.nn.functional.normalize(torch.randn(3, 8), dim=1)
    b = torch.nn.functional.normalize(torch.randn(3, 8), dim=1)
    torch.testing.assert_close(identity_loss(a, b, 0.3), ((a * b).sum(1) - 0.3).abs())
    ta, tb = torch.randn(3, 5, 7), torch.randn(3, 5, 7)
    expected = torch.stack([sum((ta[i, t] - tb[i, t]).abs().mean() for t in range(5)) for i in range(3)])
    torch.testing.assert_close(attribute_loss(ta, tb), expected)


def test_trainable_range_must_fit_the_generator(tiny_nets):
    params, images, w_real, w_fake = _setup(tiny_nets, n=1, **{"optimization.layer_stop": 99})
    with pytest.raises(ValueError, match="W\\+ layers"):
        _run(tiny_nets, params, images, w_real, w_fake)


def test_optimize_images_reads_files_in_batches_and_places_every_batch(tiny_nets, lfw_faces, tmp_path, monkeypatch):
    """The stage over 5 faces in batches of 2: the faces read from PNG files (ImageFiles) give the array's results,
    each batch's codes and per-step losses land in its own rows, and keep_images=False only drops the images. A log
    given as `show_progress` hears of every step of every batch (here with no interval between lines).

    Tolerances, not equality: on a loaded machine float32 kernels may split their sums over fewer threads (MKL's
    dynamic threading), a ~1e-7 difference that Adam's per-element normalization grows to ~3e-4 in the codes
    after 3 steps. Rows hold different faces and start codes (codes 2 apart, total losses 0.2 or more), so a
    misplaced batch fails by far."""
    from anon_core.data.image_files import ImageFiles
    from anon_core.data.image_io import save_png
    from anon_core.stages import optimize_images

    faces = lfw_faces[:5]
    paths = [tmp_path / f"{i}.png" for i in range(5)]
    for path, face in zip(paths, faces):
        save_png(path, face)
    params = load_params("tiny", **{"optimization.steps": 3, "optimization.lr": 0.01})  # tolerances set at lr 0.01
    g = tiny_nets.generator
    w_real = broadcast_ws(torch.from_numpy(seeded_codes(g, 1000, 5)), g.num_ws).numpy()
    w_fake = seeded_codes(g, 2000, 5)

    from_array = optimize_images(tiny_nets, params, faces, w_real, w_fake, batch_size=2)
    monkeypatch.setenv("FALCO_PROGRESS_EVERY_S", "0")
    lines: list[str] = []
    from_files = optimize_images(tiny_nets, params, ImageFiles(paths, 64), w_real, w_fake, batch_size=2,
                                 keep_images=False, show_progress=lines.append)
    line_form = r"optimize: (\d+)/9 steps \(\d+%\), 00:\d\d elapsed(?:, about 00:\d\d left)?(?:, batch (\d)/3)?$"
    counted = [re.match(line_form, line) for line in lines]
    assert all(counted), lines
    batches = [(step, str((step - 1) // 3 + 1)) for step in range(1, 10)]  # 3 batches of 3 steps
    assert [(int(m[1]), m[2]) for m in counted] == [(0, None), *batches]
    middle = optimize_images(tiny_nets, params, faces[2:4], w_real[2:4], w_fake[2:4], batch_size=2)

    assert from_files.images is None and from_array.images.shape == (5, 64, 64, 3)
    np.testing.assert_allclose(from_files.ws, from_array.ws, atol=5e-3, rtol=0)
    np.testing.assert_allclose(from_files.identity_similarity, from_array.identity_similarity, atol=1e-3, rtol=0)
    np.testing.assert_allclose(middle.ws, from_array.ws[2:4], atol=5e-3, rtol=0)
    assert np.abs(middle.images.astype(int) - from_array.images[2:4]).mean() < 0.5
    for name, values in from_array.history.items():
        assert values.shape == (3, 5)
        np.testing.assert_allclose(from_files.history[name], values, rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(middle.history[name], values[:, 2:4], rtol=1e-3, atol=1e-4)


def test_full_batches_pad_a_short_last_batch_without_changing_its_results(tiny_nets, lfw_faces, single_thread):
    """With torch.compile a new batch shape compiles again (87 s at 1024 px), so the stage can run the last, short
    batch at full size with its rows repeated; the copies' results are dropped and the real rows' are unchanged.
    (One thread: with two, MKL split dlib's small products by the batch's shape, and a busy machine saw the batch of
    2 and the padded batch of 3 apart by 0.022 in 44 of 6,400 code elements.)"""
    from anon_core.stages import optimize_images

    faces = lfw_faces[:5]
    params = load_params("tiny", **{"optimization.steps": 3, "optimization.lr": 0.01})  # tolerances set at lr 0.01
    g = tiny_nets.generator
    w_real = broadcast_ws(torch.from_numpy(seeded_codes(g, 1000, 5)), g.num_ws).numpy()
    w_fake = seeded_codes(g, 2000, 5)
    shapes = []
    hook = g.input.register_forward_hook(lambda module, args, out: shapes.append(args[0]))  # batch per synthesis
    try:
        plain = optimize_images(tiny_nets, params, faces, w_real, w_fake, batch_size=3, full_batches=False)
        plain_shapes, shapes[:] = set(shapes), []
        padded = optimize_images(tiny_nets, params, faces, w_real, w_fake, batch_size=3, full_batches=True)
    finally:
        hook.remove()
    assert plain_shapes == {3, 2} and set(shapes) == {3}  # the last 2 faces ran as a batch of 3
    np.testing.assert_allclose(padded.ws, plain.ws, atol=5e-3, rtol=0)
    np.testing.assert_allclose(padded.identity_similarity, plain.identity_similarity, atol=1e-3, rtol=0)
    assert np.abs(padded.images.astype(int) - plain.images).mean() < 0.5
    for name, values in plain.history.items():
        assert padded.history[name].shape == (3, 5)
        np.testing.assert_allclose(padded.history[name], values, rtol=1e-3, atol=1e-4)


def test_the_speed_forms_give_the_stage_the_same_codes(tiny_nets, lfw_faces):
    """`speed.upsample_form: polyphase` and `speed.resize_form: matmul` (params.yaml) reach the networks through the
    stage and compute the same method: the codes and images match the defaults' (same tolerances as above)."""
    from anon_core.networks.stylegan2 import ModulatedConv2d
    from anon_core.stages import optimize_images

    faces = lfw_faces[:4]
    g = tiny_nets.generator
    w_real = broadcast_ws(torch.from_numpy(seeded_codes(g, 1000, 4)), g.num_ws).numpy()
    w_fake = seeded_codes(g, 2000, 4)
    base = {"optimization.steps": 3, "optimization.lr": 0.01}
    forms = {"speed.upsample_form": "polyphase", "speed.resize_form": "matmul"}
    seen = []
    hook = g.convs[0].conv.register_forward_hook(lambda module, args, out: seen.append(module.up_form))
    try:
        default = optimize_images(tiny_nets, load_params("tiny", **base), faces, w_real, w_fake, batch_size=2)
        other = optimize_images(tiny_nets, load_params("tiny", **base, **forms), faces, w_real, w_fake, batch_size=2)
        assert tiny_nets.farl.resize_form == "matmul"
    finally:
        hook.remove()
        optimize_images(tiny_nets, load_params("tiny", **{"optimization.steps": 1}), faces[:1], w_real[:1],
                        w_fake[:1])  # the defaults again, for the session's other tests
    assert {"transposed", "polyphase"} <= set(seen)
    assert all(m.up_form == "transposed" for m in g.modules() if isinstance(m, ModulatedConv2d))
    assert tiny_nets.farl.resize_form == "interpolate"
    np.testing.assert_allclose(other.ws, default.ws, atol=5e-3, rtol=0)
    assert np.abs(other.images.astype(int) - default.images).mean() < 0.5


def test_a_learning_rate_that_overflows_float32_is_one_error_naming_it(tiny_nets):
    """lr 1e37 is a valid float32, but a few Adam steps of it overflow the codes to inf and the images to NaN: the
    optimization says so, naming the setting, instead of handing NaN images on (a ValueError from the PNG writer)."""
    from anon_core.errors import FalcoError

    params, images, w_real, w_fake = _setup(tiny_nets, n=2, **{"optimization.steps": 4, "optimization.lr": 1e37})
    with pytest.raises(FalcoError, match=r"diverged: after 4 step\(s\) the codes or images of 2 of 2 image\(s\) are "
                                         r"not finite .* optimization.lr = 1e\+37"):
        _run(tiny_nets, params, images, w_real, w_fake)


def test_the_loss_curve_says_when_the_optimization_diverged(tiny_nets):
    """A learning rate far too large leaves the mean loss above where it started (images no recognizer matches, whose
    privacy figures flatter the run); a sane one ends well below it, and gets no warning."""
    from anon_core.loss_curves import divergence_note, mean_losses
    from anon_core.optimize import LOSS_NAMES

    notes = {}
    for lr in (0.05, 100.0):
        params, images, w_real, w_fake = _setup(tiny_nets, **{"optimization.steps": 20, "optimization.lr": lr})
        history = _run(tiny_nets, params, images, w_real, w_fake).history
        notes[lr] = divergence_note(mean_losses([{n: history[n] for n in LOSS_NAMES}], 20), lr)
    assert notes[0.05] is None
    assert re.match(r"the mean loss rose from [\d.]+ at step 0 to [\d.]+ at step 19: the optimization diverged "
                    r"\(optimization.lr = 100 is likely too large", notes[100.0]), notes[100.0]
