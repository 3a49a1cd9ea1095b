"""The recurrent video SR model ``vsrrnn`` (BasicVSR-style propagation, flow learned from scratch)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedweave.errors import ModelError
from fedweave.models import build_model
from fedweave.tasks.video_sr_recurrent import RecurrentVSR, build_vsrrnn, flow_warp

def test_warp_by_a_constant_integer_flow_is_a_shift():
    feat = torch.rand(2, 3, 7, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    flow = torch.zeros(2, 2, 7, 9, dtype=torch.float64)
    flow[:, 0] = 1.0  # out[y, x] = feat[y, x + 1]: the map moves one pixel left
    out = flow_warp(feat, flow)
    rolled = torch.roll(feat, shifts=-1, dims=-1)
    assert torch.allclose(out[..., :-1], rolled[..., :-1], atol=1e-12, rtol=0)
    assert torch.allclose(out[..., -1], torch.zeros_like(out[..., -1]), atol=1e-12)  # x + 1 = 9 is outside: zero
    flow = torch.zeros_like(flow)
    flow[:, 1] = -2.0  # out[y, x] = feat[y - 2, x]: two pixels down
    out = flow_warp(feat, flow)
    assert torch.allclose(out[:, :, 2:], feat[:, :, :-2], atol=1e-12, rtol=0)
    assert float(out[:, :, :2].abs().max()) < 1e-12
    # zero flow is the identity; half a pixel is the mean of the two neighbours (bilinear)
    assert torch.allclose(flow_warp(feat, torch.zeros_like(flow)), feat, atol=1e-12, rtol=0)
    flow = torch.zeros_like(flow)
    flow[:, 0] = 0.5
    assert torch.allclose(flow_warp(feat, flow)[..., :-1], (feat[..., :-1] + feat[..., 1:]) / 2, atol=1e-12, rtol=0)


def test_warp_follows_a_per_pixel_flow():
    feat = torch.arange(25, dtype=torch.float64).reshape(1, 1, 5, 5)
    flow = torch.zeros(1, 2, 5, 5, dtype=torch.float64)
    flow[0, 0, 1, 1], flow[0, 1, 1, 1] = 2.0, 1.0  # pixel (1, 1) reads (y 2, x 3) = 2 * 5 + 3
    flow[0, 1, 3, 0] = -3.0  # pixel (3, 0) reads (0, 0) = 0
    out = flow_warp(feat, flow)
    expected = feat.clone()
    expected[0, 0, 1, 1], expected[0, 0, 3, 0] = 13.0, 0.0
    assert torch.allclose(out, expected, atol=1e-12, rtol=0)


def test_untrained_model_is_bicubic_and_the_output_has_the_hr_frame_shape():
    torch.manual_seed(0)
    model = build_vsrrnn((5, 3, 16, 16), width=4, blocks=1)
    x = torch.rand(2, 5, 3, 16, 16)
    out = model(x)
    bicubic = F.interpolate(x[:, 2], scale_factor=2, mode="bicubic", align_corners=False)
    assert out.shape == (2, 3, 32, 32) and torch.equal(out, bicubic)


def test_every_frame_and_the_flow_net_receive_gradients():
    torch.manual_seed(0)
    model = build_vsrrnn((5, 3, 16, 16), width=4, blocks=1)
    torch.nn.init.normal_(model.up.weight, std=0.1)
    torch.nn.init.normal_(model.flow.body[-1].weight, std=0.1)  # a non-zero flow: the warp's gradient reaches it
    x = torch.rand(2, 5, 3, 16, 16, requires_grad=True)
    model(x).square().sum().backward()
    assert all(float(x.grad[:, t].abs().sum()) > 0 for t in range(5))  # every frame reaches the centre output
    assert float(model.flow.body[0].weight.grad.abs().sum()) > 0  # alignment is learned from the SR loss
    assert float(model.forward_branch.conv_in.weight.grad.abs().sum()) > 0
    assert float(model.backward_branch.conv_in.weight.grad.abs().sum()) > 0


def test_each_branch_carries_only_its_side_to_the_centre():
    """The backward branch sees frames c..T-1 and the forward branch 0..c: with the forward
    branch's features cut from the fusion, the first frames cannot reach the output."""
    torch.manual_seed(0)
    model = build_vsrrnn((5, 3, 16, 16), width=4, blocks=1)
    torch.nn.init.normal_(model.up.weight, std=0.1)
    torch.nn.init.normal_(model.flow.body[-1].weight, std=0.1)
    with torch.no_grad():
        model.fuse.weight[:, :4] = 0.0  # fuse input = concat(forward, backward): drop the forward branch
    x = torch.rand(1, 5, 3, 16, 16, requires_grad=True)
    model(x).sum().backward()
    assert float(x.grad[:, 0].abs().sum()) == 0.0 and float(x.grad[:, 1].abs().sum()) == 0.0
    assert float(x.grad[:, 3].abs().sum()) > 0 and float(x.grad[:, 4].abs().sum()) > 0


def test_one_frame_is_a_single_image_model_without_flow():
    model = build_vsrrnn((1, 3, 16, 16), width=4, blocks=1)
    calls = []
    model.flow.register_forward_hook(lambda *a: calls.append(1))
    torch.nn.init.normal_(model.up.weight, std=0.1)
    out = model(torch.rand(2, 1, 3, 16, 16))
    assert out.shape == (2, 3, 32, 32) and calls == []


def test_without_alignment_the_flow_net_is_unused_and_zero_flow_is_the_same_model():
    torch.manual_seed(0)
    aligned = build_vsrrnn((5, 3, 16, 16), width=4, blocks=1)
    torch.nn.init.normal_(aligned.up.weight, std=0.1)
    plain = build_vsrrnn((5, 3, 16, 16), width=4, blocks=1, align=False)
    plain.load_state_dict(aligned.state_dict())
    calls = []
    plain.flow.register_forward_hook(lambda *a: calls.append(1))
    x = torch.rand(2, 5, 3, 16, 16)
    # the untrained flow is zero, and warping by zero flow is the identity
    assert torch.allclose(plain(x), aligned(x), atol=1e-6) and calls == []
    torch.nn.init.normal_(aligned.flow.body[-1].weight, std=0.5)
    assert not torch.allclose(plain(x), aligned(x), atol=1e-4)  # a non-zero flow changes the output


def test_registered_and_built_through_the_model_zoo():
    model = build_model("vsrrnn", (3, 3, 16, 16), 10, width=8, blocks=3)
    assert isinstance(model, RecurrentVSR) and model.width == 8 and len(model.forward_branch.blocks) == 3


@pytest.mark.parametrize("shape, words", [((3, 32, 32), "video model"), ((4, 3, 16, 16), "odd number of frames")])
def test_wrong_input_shapes_are_refused(shape, words):
    with pytest.raises(ModelError, match=words):
        build_vsrrnn(shape)


def test_bad_options_and_a_wrong_runtime_input_are_refused():
    with pytest.raises(ModelError, match="blocks"):
        build_vsrrnn((3, 3, 16, 16), blocks=-1)
    with pytest.raises(ModelError, match="align"):
        build_vsrrnn((3, 3, 16, 16), align="no")
    with pytest.raises(ModelError, match="depth"):
        build_vsrrnn((3, 3, 16, 16), depth=2)
    with pytest.raises(ModelError, match="clips"):
        build_vsrrnn((3, 3, 16, 16))(torch.rand(2, 3, 16, 16))

