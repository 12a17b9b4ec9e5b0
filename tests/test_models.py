"""Tests of the segmentation networks, their config, and the planning heuristics."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from napari_medseg.errors import MedsegInputError
from napari_medseg.models import (
    FCN2D,
    NetworkConfig,
    UNet2D,
    UNet3D,
    build_network,
    count_parameters,
)
from napari_medseg.models.blocks import has_batch_norm, pad_to_divisor
from napari_medseg.models.planning import (
    plan_network,
    plan_patch_shape,
    pooling_product,
    required_divisor,
)

ANISO_POOLS = [(1, 2, 2), (1, 2, 2), (2, 2, 2)]
ANISO_KERNELS = [(1, 3, 3), (1, 3, 3), (3, 3, 3), (3, 3, 3)]

CONFIGS = [
    NetworkConfig(arch="unet3d", base_channels=4),
    NetworkConfig(
        arch="unet3d", base_channels=4, pool_sizes=ANISO_POOLS, kernel_sizes=ANISO_KERNELS
    ),
    NetworkConfig(arch="unet2d", base_channels=4),
    NetworkConfig(arch="fcn", base_channels=4),
]


@pytest.fixture(autouse=True)
def _seed_and_one_thread() -> Iterator[None]:
    # one intra-op thread: on a busy 2-core machine OpenMP threads that wait for each
    # other make tiny networks 10-20x slower than a single thread
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.arch}-{c.pool_sizes is not None}")
@pytest.mark.parametrize("shape", [(2, 1, 13, 37, 29), (1, 1, 5, 16, 16), (1, 1, 1, 9, 7)])
def test_output_shape_matches_input(cfg: NetworkConfig, shape: tuple[int, ...]) -> None:
    net = build_network(cfg)
    net.train()
    out = net(torch.randn(shape))
    assert out.shape == (shape[0], cfg.n_classes, *shape[2:])
    net.eval()
    with torch.no_grad():
        assert net(torch.randn(shape)).shape == out.shape


@pytest.mark.parametrize("arch", ["unet3d", "unet2d", "fcn"])
def test_multichannel_multiclass(arch: str) -> None:
    net = build_network(NetworkConfig(arch=arch, in_channels=2, n_classes=4, base_channels=2))
    out = net(torch.randn(1, 2, 6, 20, 18))
    assert out.shape == (1, 4, 6, 20, 18)


def test_default_unet3d_odd_shape() -> None:
    net = build_network(NetworkConfig())
    with torch.no_grad():
        out = net.eval()(torch.randn(2, 1, 13, 37, 29))
    assert out.shape == (2, 2, 13, 37, 29)


@pytest.mark.parametrize("arch", ["unet3d", "unet2d", "fcn"])
def test_no_batch_norm_variant(arch: str) -> None:
    net = build_network(NetworkConfig(arch=arch, base_channels=4, batch_norm=False))
    assert not has_batch_norm(net)
    convs = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    assert all(m.bias is not None for m in convs)
    assert has_batch_norm(build_network(NetworkConfig(arch=arch, base_channels=4)))
    assert net(torch.randn(1, 1, 3, 17, 17)).shape == (1, 2, 3, 17, 17)


@pytest.mark.parametrize("arch", ["unet3d", "unet2d", "fcn"])
def test_group_norm_variant_does_not_depend_on_the_batch(arch: str) -> None:
    torch.manual_seed(0)
    net = build_network(NetworkConfig(arch=arch, base_channels=6, norm_groups=4)).train()
    assert not has_batch_norm(net)
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.num_groups in (2, 4) for m in norms)  # gcd(4, 6) = 2, gcd(4, 12) = 4
    x = torch.randn(2, 1, 4, 32, 32)
    with torch.no_grad():
        together = net(x)
        alone = net(x[:1])
        net.eval()
        evaluated = net(x[:1])
    # each patch is normalised on its own: in training, with a neighbour, and in prediction
    torch.testing.assert_close(together[:1], alone, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(alone, evaluated, atol=1e-4, rtol=1e-4)
    old = NetworkConfig.from_dict({k: v for k, v in NetworkConfig().to_dict().items()
                                   if k != "norm_groups"})  # fmt: skip
    assert old.norm_groups == 0 and has_batch_norm(build_network(old))


def test_unet3d_structure_follows_the_paper() -> None:
    net = UNet3D(base_channels=16)
    assert len(net.encoders) == 3 and len(net.decoders) == 3
    pools = [m for m in net.modules() if isinstance(m, nn.MaxPool3d)]
    assert [m.kernel_size for m in pools] == [(2, 2, 2)] * 3
    ups = [m for m in net.modules() if isinstance(m, nn.ConvTranspose3d)]
    assert [m.stride for m in ups] == [(2, 2, 2)] * 3
    assert net.head.kernel_size == (1, 1, 1)
    widths = [enc[1][0].out_channels for enc in net.encoders] + [net.bottleneck[1][0].out_channels]
    assert widths == [16, 32, 64, 128]
    assert net.divisor == (8, 8, 8)


def test_anisotropic_unet3d_uses_its_kernels() -> None:
    net = UNet3D(base_channels=2, pool_sizes=ANISO_POOLS, kernel_sizes=ANISO_KERNELS)
    first = net.encoders[0][0][0]
    assert first.kernel_size == (1, 3, 3) and first.padding == (0, 1, 1)
    assert net.divisor == (2, 8, 8)


@pytest.mark.parametrize(
    ("arch", "low", "high"),
    [("unet3d", 1.0e6, 2.0e6), ("unet2d", 1.5e6, 2.5e6), ("fcn", 0.4e6, 1.0e6)],
)
def test_parameter_counts_reasonable(arch: str, low: float, high: float) -> None:
    n = count_parameters(build_network(NetworkConfig(arch=arch)))
    assert low < n < high


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.arch}-{c.pool_sizes is not None}")
def test_gradients_reach_first_layer(cfg: NetworkConfig) -> None:
    net = build_network(cfg)
    x = torch.randn(2, 1, 4, 20, 20)
    target = torch.randint(0, 2, (2, 4, 20, 20))
    loss = nn.functional.cross_entropy(net(x), target)
    loss.backward()
    first = next(m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d)))
    assert first.weight.grad is not None
    assert float(first.weight.grad.abs().sum()) > 0


def test_fcn_upsampling_is_bilinear_initialised() -> None:
    net = FCN2D(base_channels=2, n_classes=3)
    w = net.up32.weight
    assert torch.allclose(w[0, 0, 1], torch.tensor([0.1875, 0.5625, 0.5625, 0.1875]))
    assert float(w[0, 1].abs().sum()) == 0.0
    assert float(net.score8.weight.abs().sum()) == 0.0


def test_2d_networks_are_slicewise() -> None:
    net = UNet2D(base_channels=2).eval()
    x = torch.randn(1, 1, 3, 16, 16)
    with torch.no_grad():
        full = net(x)
        single = net(x[:, :, 1:2])
    assert torch.allclose(full[:, :, 1:2], single, atol=1e-5)


def test_pad_to_divisor_crops_back() -> None:
    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).reshape(1, 2, 3, 5, 7)
    padded, crop = pad_to_divisor(x, (4, 4, 8))
    assert padded.shape == (1, 2, 4, 8, 8)
    assert torch.equal(padded[crop], x)


def test_config_round_trip_is_json_safe() -> None:
    cfg = NetworkConfig(
        arch="unet3d",
        in_channels=2,
        n_classes=3,
        base_channels=8,
        batch_norm=False,
        pool_sizes=ANISO_POOLS,
        kernel_sizes=ANISO_KERNELS,
        dropout=0.1,
    )
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["pool_sizes"] == [list(p) for p in ANISO_POOLS]
    back = NetworkConfig.from_dict(data)
    assert back == cfg
    assert back.pool_sizes == ANISO_POOLS and isinstance(back.pool_sizes[0], tuple)
    assert NetworkConfig.from_dict(NetworkConfig(arch="fcn").to_dict()) == NetworkConfig(arch="fcn")


def test_config_lists_are_normalised_to_tuples() -> None:
    cfg = NetworkConfig(pool_sizes=[[1, 2, 2], [2, 2, 2]], kernel_sizes=None)
    assert cfg.pool_sizes == [(1, 2, 2), (2, 2, 2)]
    assert required_divisor(cfg) == (2, 4, 4)
    assert build_network(cfg).kernel_sizes == [(3, 3, 3)] * 3


@pytest.mark.parametrize(
    "data",
    [
        {"arch": "transformer"},
        {"arch": "unet3d", "depth": 5},
        {"arch": "unet3d", "pool_sizes": [[2, 2]]},
        {"arch": "unet3d", "kernel_sizes": [[2, 3, 3]] * 4},
        {"arch": "unet3d", "pool_sizes": [[2, 2, 2]] * 3, "kernel_sizes": [[3, 3, 3]] * 3},
        {"arch": "unet2d", "pool_sizes": [[2, 2, 2]] * 3},
        {"n_classes": 0},
        {"dropout": 1.5},
        {"batch_norm": "yes"},
        {"norm_groups": -1},
        {"norm_groups": 65},
        {"norm_groups": True},
        {"norm_groups": 2.0},
    ],
)
def test_from_dict_rejects_foreign_configs(data: dict) -> None:
    with pytest.raises(ValueError) as info:
        NetworkConfig.from_dict(data)
    assert isinstance(info.value, MedsegInputError)
    assert str(info.value)


def test_unknown_arch_message_names_the_choices() -> None:
    with pytest.raises(ValueError, match="unet3d, unet2d, fcn"):
        NetworkConfig(arch="vnet")


def test_required_divisor() -> None:
    assert required_divisor(NetworkConfig()) == (8, 8, 8)
    assert required_divisor(NetworkConfig(pool_sizes=ANISO_POOLS)) == (2, 8, 8)
    assert required_divisor(NetworkConfig(arch="unet2d")) == (1, 16, 16)
    assert required_divisor(NetworkConfig(arch="fcn")) == (1, 32, 32)


def test_plan_isotropic_is_the_paper() -> None:
    pools, kernels = plan_network((1.0, 1.0, 1.0), (64, 64, 64))
    assert pools == [(2, 2, 2)] * 3
    assert kernels == [(3, 3, 3)] * 4


def test_plan_anisotropic_thick_slices() -> None:
    pools, kernels = plan_network((6.5, 0.78, 0.78), (8, 96, 96))
    assert pools[:2] == [(1, 2, 2), (1, 2, 2)]
    assert all(p[1:] == (2, 2) for p in pools)
    assert kernels[0] == (1, 3, 3)
    assert len(kernels) == 4
    pools, kernels = plan_network((3.0, 1.0, 1.0), (32, 128, 128))
    # z joins once the in-plane spacing is within 1.5x of it: after one in-plane pool
    assert pools == [(1, 2, 2), (2, 2, 2), (2, 2, 2)]
    assert kernels == [(1, 3, 3)] + [(3, 3, 3)] * 3
    # 2.1 mm slices at 0.66 mm (breast1): 2.1 / 1.33 > 1.5, so z waits one more level
    pools, kernels = plan_network((2.1, 0.664, 0.664), (20, 72, 40))
    assert pools == [(1, 2, 2), (1, 2, 2), (2, 2, 2)]
    assert kernels == [(1, 3, 3)] * 2 + [(3, 3, 3)] * 2
    # mildly anisotropic (1.3 <= 1.5): the paper's isotropic network
    pools, kernels = plan_network((1.3, 1.0, 1.0), (32, 48, 48))
    assert pools == [(2, 2, 2)] * 3
    assert kernels == [(3, 3, 3)] * 4


def test_plan_stops_pooling_small_axes() -> None:
    pools, _ = plan_network((1.0, 1.0, 1.0), (10, 64, 64))
    assert pools == [(2, 2, 2), (1, 2, 2), (1, 2, 2)]
    pools, kernels = plan_network((1.0, 1.0, 1.0), (1, 64, 64))
    assert pools == [(1, 2, 2)] * 3
    assert kernels == [(1, 3, 3)] * 4


@pytest.mark.parametrize(
    ("image_shape", "spacing"),
    [
        ((200, 200, 200), (1.0, 1.0, 1.0)),
        ((20, 256, 256), (6.5, 0.78, 0.78)),
        ((150, 512, 512), (2.5, 0.7, 0.7)),
        ((1, 256, 256), (1.0, 1.0, 1.0)),
        ((5, 30, 30), (1.0, 1.0, 1.0)),
    ],
)
def test_plan_patch_shape(image_shape: tuple, spacing: tuple) -> None:
    budget = 64**3
    patch = plan_patch_shape(image_shape, spacing, budget_voxels=budget)
    pools, _ = plan_network(spacing, patch)
    divisor = pooling_product(pools)
    assert all(p % d == 0 for p, d in zip(patch, divisor))
    assert all(p <= max(n, d) for p, n, d in zip(patch, image_shape, divisor))
    assert patch[0] * patch[1] * patch[2] <= budget
    assert plan_patch_shape(image_shape, spacing, budget_voxels=budget) == patch


def test_plan_patch_shape_isotropic_in_mm() -> None:
    assert plan_patch_shape((200, 200, 200), (1.0, 1.0, 1.0)) == (64, 64, 64)
    patch = plan_patch_shape((40, 400, 400), (4.0, 1.0, 1.0))
    extent = [p * s for p, s in zip(patch, (4.0, 1.0, 1.0))]
    assert max(extent) / min(extent) < 1.5


def test_plan_patch_shape_pads_small_images() -> None:
    patch = plan_patch_shape((3, 20, 20), (1.0, 1.0, 1.0))
    assert patch == (3, 20, 20) or all(p >= n for p, n in zip(patch, (3, 20, 20)))


def test_unet3d_overfits_a_bright_cube() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 1, 16, 16, 16) * 0.3
    y = torch.zeros(1, 16, 16, 16, dtype=torch.long)
    y[:, 4:11, 5:12, 3:10] = 1
    x = x + 2.0 * y[:, None].float()
    net = build_network(NetworkConfig(arch="unet3d", base_channels=4))
    opt = torch.optim.Adam(net.parameters(), lr=3e-2)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 5
    net.eval()
    with torch.no_grad():
        pred = net(x).argmax(1)
    assert float((pred == y).float().mean()) > 0.95
