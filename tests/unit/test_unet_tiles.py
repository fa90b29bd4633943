"""U-Net's overlap-tile training (Ronneberger et al. 2015, §2, Fig. 2) and the eq. 2 weight map:
training tiles carry the image's real context (mirrored only beyond its border), the net predicts
their inner region exactly as whole-image inference does, and the weight map matches a hand
computation."""
import math

import numpy as np
import torch
import torch.nn.functional as F

from segbench.data.transforms import train_pipeline
from segbench.data.weight_map import unet_weight_map
from segbench.engine.losses import SegmentationLoss
from segbench.models.unet import VALID_MARGIN, UNet


def _reflect101(i: int, n: int) -> int:
    while i < 0 or i >= n:
        i = -i if i < 0 else 2 * (n - 1) - i
    return i


def test_training_tile_carries_real_context_and_mirrors_only_beyond_the_border():
    h, w, crop, ctx = 32, 36, 8, 5
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    image = np.stack([rows * 7, cols * 7, np.zeros_like(rows)], -1).astype(np.uint8)  # position-coded
    label = ((rows + cols) % 2).astype(np.uint8)
    pipe = train_pipeline(crop, scale_range=None, hflip=False, pad_value=0, mean=(0, 0, 0), std=(1, 1, 1),
                          border="reflect", context=ctx)
    pipe.set_random_seed(0)
    interior = 0
    for _ in range(12):
        out = pipe(image=image, mask=label)
        tile = out["image"].astype(int)  # uint8: normalised later, on the device
        assert tile.shape == (crop + 2 * ctx, crop + 2 * ctx, 3)
        y0, x0 = tile[ctx, ctx, 0] // 7, tile[ctx, ctx, 1] // 7  # image position of the output tile
        for a in range(tile.shape[0]):
            for b in range(tile.shape[1]):
                y, x = _reflect101(y0 - ctx + a, h), _reflect101(x0 - ctx + b, w)
                assert (tile[a, b, 0], tile[a, b, 1]) == (y * 7, x * 7)
        inner = out["mask"][ctx:-ctx, ctx:-ctx]
        np.testing.assert_array_equal(inner, label[y0:y0 + crop, x0:x0 + crop])  # real labels, never mirrored
        ring = out["mask"].copy()
        ring[ctx:-ctx, ctx:-ctx] = 255
        assert (ring == 255).all()  # the context is seen, not predicted
        if ctx <= y0 <= h - crop - ctx and ctx <= x0 <= w - crop - ctx:
            interior += 1  # a tile away from the border: its first row is the real row above it,
            assert tile[0, ctx, 0] == (y0 - ctx) * 7  # not the mirror of the crop (row y0 + ctx)
    assert interior > 0


@torch.no_grad()
def test_context_tile_predicts_its_inner_region_as_whole_image_inference_does():
    torch.manual_seed(0)
    net = UNet(2, base_channels=2, dropout=0.0, tile_context=True)
    image = torch.randn(1, 3, 208, 208)
    whole = net.eval()(image)["out"]
    y0 = x0 = 96  # the output tile's corner: a multiple of 16, so pooling grids align
    m, inner = VALID_MARGIN, 20
    tile = image[..., y0 - m:y0 + inner + m, x0 - m:x0 + inner + m]
    out = net.train()(tile)["out"]
    assert out.shape[-2:] == tile.shape[-2:]
    torch.testing.assert_close(out[..., m:m + inner, m:m + inner], whole[..., y0:y0 + inner, x0:x0 + inner])
    ring = out.clone()
    ring[..., m:m + inner, m:m + inner] = 0
    assert not ring.any()
    mirrored = UNet(2, base_channels=2, dropout=0.0).train()  # the old way: the crop mirror-padded
    mirrored.load_state_dict(net.state_dict())
    old = mirrored(tile[..., m:m + inner, m:m + inner])["out"]
    assert not torch.allclose(old, whole[..., y0:y0 + inner, x0:x0 + inner])


def test_up_convolution_is_followed_by_relu_as_in_the_release():
    torch.manual_seed(0)
    net = UNet(2, base_channels=2, padding="same").eval()
    seen = []
    hook = net.up_conv[0].register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    net(torch.randn(1, 3, 32, 32))
    hook.remove()
    up_half = seen[0][:, seen[0].shape[1] // 2:]  # [skip, up] concatenation
    assert (up_half >= 0).all() and (up_half == 0).any()


def test_weight_map_matches_a_hand_computed_example():
    # two cells (train id 1) separated by a 3 px membrane gap; one pixel ignored
    label = np.zeros((3, 9), dtype=np.int64)
    label[:, :3] = 1
    label[:, 6:] = 1
    label[0, 0] = 255
    w = unet_weight_map(label, num_classes=2, w0=10.0, sigma=5.0)
    # gap columns 3, 4, 5: (d1, d2) = (1, 3), (2, 2), (3, 1) -> d1 + d2 = 4 everywhere;
    # class balance: 17 cell pixels, 9 membrane pixels -> w_c = 17/9 (membrane), 1 (cell)
    gap = 17 / 9 + 10.0 * math.exp(-(4 ** 2) / (2 * 5.0 ** 2))
    expected = np.ones((3, 9))
    expected[:, 3:6] = gap
    expected[0, 0] = 0.0
    np.testing.assert_allclose(w, expected, rtol=1e-6)
    np.testing.assert_allclose(unet_weight_map(label, 2, class_balance=False)[1], [1, 1, 1] + [gap - 17 / 9 + 1] * 3 + [1] * 3,
                               rtol=1e-6)


def test_weighted_loss_is_the_weight_map_times_the_pixel_cross_entropy():
    label = torch.zeros(1, 3, 9, dtype=torch.long)
    label[..., :3] = 1
    label[..., 6:] = 1
    label[0, 0, 0] = 255
    logits = torch.randn(1, 2, 3, 9)
    w = torch.from_numpy(unet_weight_map(label[0].numpy(), 2))
    loss = SegmentationLoss(aux_weight=0.0, weight_map={"w0": 10.0, "sigma": 5.0})({"out": logits}, label, weights=w[None])
    ce = F.cross_entropy(logits, label, ignore_index=255, reduction="none")[0]
    torch.testing.assert_close(loss, (w * ce).sum() / 26)
