"""Masked losses, patch sampling and tiling: the pieces under training and inference."""

import numpy as np
import pytest
import torch

from napari_medseg.losses import class_weights_from_counts, masked_cross_entropy, masked_soft_dice
from napari_medseg.sampling import AnnotatedPatchSampler
from napari_medseg.tiling import GaussianAggregator, GridSampler, gaussian_importance, tile_starts


def test_unknown_voxels_have_zero_weight_in_the_loss():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 4, 5, 6, requires_grad=True)
    target = torch.full((1, 4, 5, 6), -1, dtype=torch.long)
    target[0, 1] = 2
    target[0, 2, :2] = 0
    loss = masked_cross_entropy(logits, target) + masked_soft_dice(logits, target)
    loss.backward()
    unknown = (target == -1)[0]
    grad = logits.grad[0].abs().sum(0)
    assert torch.all(grad[unknown] == 0)
    assert torch.all(grad[~unknown] > 0)


def test_changing_unknown_logits_does_not_change_the_loss():
    torch.manual_seed(1)
    logits = torch.randn(2, 2, 3, 4, 4)
    target = torch.randint(0, 2, (2, 3, 4, 4))
    target[:, 0] = -1
    before = masked_cross_entropy(logits, target) + masked_soft_dice(logits, target)
    changed = logits.clone()
    changed[:, :, 0] = 100.0 * torch.randn_like(changed[:, :, 0])
    after = masked_cross_entropy(changed, target) + masked_soft_dice(changed, target)
    assert torch.isclose(before, after)


def test_no_annotated_voxel_gives_zero_loss_not_nan():
    logits = torch.randn(1, 2, 2, 2, 2, requires_grad=True)
    target = torch.full((1, 2, 2, 2), -1, dtype=torch.long)
    loss = masked_cross_entropy(logits, target)
    assert float(loss) == 0.0
    loss.backward()


def test_class_weights_favour_rare_classes():
    w = class_weights_from_counts([1000, 10, 0])
    assert w[1] > w[0] > 0
    assert w[2] == 0
    assert torch.isclose(w[:2].mean(), torch.tensor(1.0))


def test_sampler_patches_always_hold_annotated_voxels_and_balance_classes():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 20, 30, 30)).astype(np.float32)
    target = np.full((20, 30, 30), -1, dtype=np.int64)
    target[10] = 0
    target[10, 5:7, 5:7] = 1  # 4 foreground voxels among 900 annotated ones
    sampler = AnnotatedPatchSampler(image, target, (8, 12, 12), rng)
    fg_patches = 0
    for _ in range(200):
        img, tgt = sampler.sample()
        assert img.shape == (1, 8, 12, 12) and tgt.shape == (8, 12, 12)
        assert (tgt >= 0).any()
        fg_patches += int((tgt == 1).any())
    assert fg_patches > 80  # about half the patches target the rare class


def test_sampler_pads_volumes_smaller_than_a_patch():
    rng = np.random.default_rng(0)
    image = np.ones((1, 3, 5, 5), np.float32)
    target = np.zeros((3, 5, 5), np.int64)
    img, tgt = AnnotatedPatchSampler(image, target, (4, 8, 8), rng).sample()
    assert img.shape == (1, 4, 8, 8)
    assert (tgt == -1).sum() == 4 * 8 * 8 - 3 * 5 * 5


@pytest.mark.parametrize(
    "size,tile,overlap", [(10, 4, 0.5), (7, 7, 0.5), (5, 8, 0.25), (33, 16, 0.0)]
)
def test_tiles_cover_every_voxel(size, tile, overlap):
    starts = tile_starts(size, tile, overlap)
    covered = np.zeros(size, bool)
    for s in starts:
        covered[s : s + tile] = True
    assert covered.all()
    assert starts[-1] + min(tile, size) == size


def test_grid_aggregation_reproduces_a_constant_field():
    shape = (9, 20, 17)
    sampler = GridSampler(shape, (4, 8, 8), overlap=0.5)
    agg = GaussianAggregator(2, shape, sampler.tile_shape)
    for region in sampler:
        tile = np.zeros((2, *[s.stop - s.start for s in region]), np.float32)
        tile[1] = 0.8
        tile[0] = 0.2
        agg.add(region, tile)
    assert (agg.labels() == 1).all()
    probs = agg.probabilities()
    np.testing.assert_allclose(probs[1], 0.8, rtol=1e-5)


def test_gaussian_importance_peaks_in_the_centre():
    w = gaussian_importance((5, 9, 9))
    assert w[2, 4, 4] == pytest.approx(1.0)
    assert w[0, 0, 0] < w[2, 4, 4]
    assert w.min() > 0
