"""Tests of patch augmentation (flips, rotations, intensity, elastic deformation)."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_medseg.augmentation import (
    AugmentConfig,
    augment,
    elastic_coordinates,
    random_displacement,
    resample,
    rot90_planes,
    scaling_axes,
    smooth_displacement,
)

OFF = dict(
    flips=False,
    rotate90=False,
    intensity_scale=0.0,
    intensity_shift=0.0,
    gamma=0.0,
    elastic=False,
    rotation_degrees=0.0,
    scale_range=(1.0, 1.0),
    noise_std=0.0,
)


def only(**kwargs: object) -> AugmentConfig:
    """Config with everything off except ``kwargs``."""
    return AugmentConfig(**{**OFF, **kwargs})  # type: ignore[arg-type]


def make_patch(
    shape: tuple[int, int, int] = (8, 20, 20), channels: int = 1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.standard_normal((channels, *shape)).astype(np.float32)
    target = np.full(shape, -1, dtype=np.int64)
    target[: shape[0] // 2] = 0
    target[1 : shape[0] - 1, 3:12, 5:15] = 1
    target[2:5, 12:18, 2:8] = 2
    return image, target


def strong() -> AugmentConfig:
    return AugmentConfig(
        elastic_probability=1.0, rotation_probability=1.0, gamma=0.3, noise_std=0.05
    )


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (3.0, 0.8, 0.8)])
@pytest.mark.parametrize("seed", range(4))
def test_shapes_dtypes_and_label_set(seed: int, spacing: tuple) -> None:
    image, target = make_patch(channels=2)
    before_image, before_target = image.copy(), target.copy()
    out_image, out_target = augment(image, target, np.random.default_rng(seed), strong(), spacing)
    assert out_image.shape == image.shape and out_image.dtype == np.float32
    assert out_target.shape == target.shape and out_target.dtype == np.int64
    assert out_image.flags.c_contiguous and out_target.flags.c_contiguous
    assert set(np.unique(out_target)) <= set(np.unique(target)) | {-1}
    assert np.isfinite(out_image).all()
    # inputs are not modified
    assert np.array_equal(image, before_image) and np.array_equal(target, before_target)


def test_ignored_voxels_are_never_turned_into_labels() -> None:
    # a target that is ignored everywhere stays ignored under any augmentation
    image, _ = make_patch()
    target = np.full(image.shape[1:], -1, dtype=np.int64)
    for seed in range(5):
        _, out = augment(image, target, np.random.default_rng(seed), strong())
        assert (out == -1).all()


def test_elastic_keeps_labels_integer_and_mostly_in_place() -> None:
    image, target = make_patch((16, 32, 32))
    cfg = only(elastic=True, elastic_probability=1.0, elastic_sigma_voxels=2.0)
    _, out = augment(image, target, np.random.default_rng(0), cfg)
    assert set(np.unique(out)) <= {-1, 0, 1, 2}
    assert 0.5 < np.mean(out == target) < 1.0


def test_flips_are_exact_flips() -> None:
    image, target = make_patch()
    seen = set()
    for seed in range(16):
        out_image, out_target = augment(
            image, target, np.random.default_rng(seed), only(flips=True)
        )
        matches = [
            axes
            for n in range(4)
            for axes in itertools.combinations(range(3), n)
            if np.array_equal(out_target, np.flip(target, axes))
            and np.array_equal(out_image, np.flip(image, [a + 1 for a in axes]))
        ]
        assert matches, "output is not an exact flip of the input"
        seen.add(matches[0])
    assert len(seen) > 3  # different seeds flip different axes


def test_flip_matches_the_rng_draws() -> None:
    image, target = make_patch()
    draws = np.random.default_rng(7).random(3)
    axes = tuple(a for a in range(3) if draws[a] < 0.5)
    out_image, out_target = augment(image, target, np.random.default_rng(7), only(flips=True))
    assert np.array_equal(out_target, np.flip(target, axes))
    assert np.array_equal(out_image, np.flip(image, [a + 1 for a in axes]))


def test_elastic_with_zero_displacement_is_identity() -> None:
    image, target = make_patch((5, 9, 11), channels=2)
    coords = elastic_coordinates(target.shape, np.zeros((3, *target.shape)))
    out_image, out_target = resample(image, target, coords)
    assert np.array_equal(out_image, image)
    assert np.array_equal(out_target, target)
    cfg = only(elastic=True, elastic_probability=1.0, elastic_sigma_voxels=0.0)
    out_image, out_target = augment(image, target, np.random.default_rng(0), cfg)
    assert np.array_equal(out_image, image) and np.array_equal(out_target, target)


def test_deformation_outside_the_patch_is_ignored() -> None:
    image, target = make_patch((4, 10, 10))
    target[:] = 1
    coords = elastic_coordinates(target.shape)
    coords[2] += 3.0  # sample 3 voxels further along x: the last 3 columns fall outside
    out_image, out_target = resample(image, target, coords)
    assert (out_target[..., -3:] == -1).all() and (out_target[..., :-3] == 1).all()
    assert np.array_equal(out_image[..., :-3], image[..., 3:])


def test_deterministic_for_the_same_seed() -> None:
    image, target = make_patch(channels=2)
    a = augment(image, target, np.random.default_rng(123), strong(), (2.0, 1.0, 1.0))
    b = augment(image, target, np.random.default_rng(123), strong(), (2.0, 1.0, 1.0))
    c = augment(image, target, np.random.default_rng(124), strong(), (2.0, 1.0, 1.0))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_rot90_only_in_planes_of_equal_spacing_and_size() -> None:
    assert rot90_planes((8, 20, 20), (3.0, 0.8, 0.8)) == [(1, 2)]
    assert rot90_planes((20, 20, 20), (1.0, 1.0, 1.0)) == [(0, 1), (0, 2), (1, 2)]
    assert rot90_planes((20, 20, 20), (3.0, 1.0, 2.0)) == []
    assert rot90_planes((20, 20, 24), (1.0, 1.0, 1.0)) == [(0, 1)]


def test_rot90_not_applied_when_spacing_differs() -> None:
    image, target = make_patch((12, 12, 12))
    cfg = only(rotate90=True)
    for seed in range(8):
        out_image, out_target = augment(
            image, target, np.random.default_rng(seed), cfg, (1.0, 2.0, 3.0)
        )
        assert np.array_equal(out_target, target) and np.array_equal(out_image, image)
    results = [
        augment(image, target, np.random.default_rng(s), cfg, (1.0, 1.0, 1.0))[1] for s in range(8)
    ]
    assert any(not np.array_equal(r, target) for r in results)


def test_rot90_in_plane_for_anisotropic_spacing() -> None:
    image, target = make_patch((6, 16, 16))
    for seed in range(6):
        out_image, out_target = augment(
            image, target, np.random.default_rng(seed), only(rotate90=True), (3.0, 0.8, 0.8)
        )
        ks = [
            k
            for k in range(4)
            if np.array_equal(out_target, np.rot90(target, k, axes=(1, 2)))
            and np.array_equal(out_image, np.rot90(image, k, axes=(2, 3)))
        ]
        assert ks


def test_intensity_changes_image_only() -> None:
    image, target = make_patch()
    cfg = only(intensity_scale=0.2, intensity_shift=0.2, gamma=0.3, noise_std=0.1)
    out_image, out_target = augment(image, target, np.random.default_rng(0), cfg)
    assert np.array_equal(out_target, target)
    assert not np.allclose(out_image, image)
    assert np.corrcoef(out_image.ravel(), image.ravel())[0, 1] > 0.8


def test_displacement_is_smooth_spacing_aware_and_zero_on_flat_axes() -> None:
    rng = np.random.default_rng(0)
    field = random_displacement((1, 40, 40), rng, 4.0, 3, (1.0, 1.0, 1.0))
    assert field.shape == (3, 1, 40, 40)
    assert (field[0] == 0).all() and np.abs(field[1]).max() > 0
    sds = np.array(
        [
            random_displacement((16, 32, 32), np.random.default_rng(s), 4.0, 3, (4.0, 1.0, 1.0))
            .reshape(3, -1)
            .std(axis=1)
            for s in range(20)
        ]
    ).mean(axis=0)
    assert sds[0] < 0.5 * sds[1]  # 4x coarser axis moves by ~4x fewer voxels
    assert np.abs(np.diff(field[1], axis=-1)).max() < 1.0  # smooth


def test_smooth_displacement_matches_scipy_zoom() -> None:
    from scipy import ndimage

    coarse = np.random.default_rng(1).standard_normal((3, 3, 3, 3))
    shape = (7, 13, 10)
    ref = np.stack(
        [
            ndimage.zoom(
                coarse[i], [s / 3 for s in shape], order=3, mode="nearest", grid_mode=False
            )
            for i in range(3)
        ]
    )
    assert np.allclose(smooth_displacement(shape, coarse), ref)


def test_rejects_bad_input() -> None:
    image, target = make_patch()
    with pytest.raises(ValueError):
        augment(image[0], target, np.random.default_rng(0), AugmentConfig())
    with pytest.raises(ValueError):
        augment(image, target[:-1], np.random.default_rng(0), AugmentConfig())
    with pytest.raises(ValueError):
        augment(image, target, np.random.default_rng(0), AugmentConfig(), (0.0, 1.0, 1.0))
    with pytest.raises(ValueError):
        AugmentConfig(elastic_probability=2.0)


def test_is_torch_free() -> None:
    code = "import sys, napari_medseg.augmentation; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.stdout.strip() == "False"


def test_scaling_zooms_the_fine_axes_only() -> None:
    shape = (6, 24, 24)
    image = np.zeros((1, *shape), np.float32)
    target = np.zeros(shape, np.int64)
    target[:, 9:15, 9:15] = 1  # a 6 x 6 square on every slice, centred in plane
    image[0] = target
    cfg = only(scale_range=(2.0, 2.0), scale_probability=1.0)
    out_image, out_target = augment(image, target, np.random.default_rng(0), cfg, (3.0, 0.8, 0.8))
    per_slice = (out_target == 1).sum(axis=(1, 2))
    # magnified twice in plane: 12 x 12 on every slice; the thick axis is not zoomed
    assert per_slice.tolist() == [144] * shape[0]
    assert np.array_equal(out_image[0] > 0.5, out_target == 1)
    shrunk = augment(
        image,
        target,
        np.random.default_rng(0),
        only(scale_range=(0.5, 0.5), scale_probability=1.0),
        (1.0, 1.0, 1.0),
    )[1]
    assert 0 < (shrunk == 1).sum() < (target == 1).sum()


def test_scaling_axes_follow_the_spacing() -> None:
    assert scaling_axes((8, 20, 20), (3.0, 0.8, 0.8)) == [1, 2]
    assert scaling_axes((8, 20, 20), (1.0, 1.0, 1.0)) == [0, 1, 2]
    assert scaling_axes((1, 20, 20), (1.0, 1.0, 1.0)) == [1, 2]


@pytest.mark.parametrize("bad", [(0.0, 1.0), (1.2, 0.9), (float("nan"), 1.0)])
def test_bad_scale_range_is_refused(bad: tuple) -> None:
    with pytest.raises(ValueError, match="scale_range"):
        AugmentConfig(scale_range=bad)
