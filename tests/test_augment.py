"""BatchAugment: shapes, determinism, per-sample randomness, each op against torchvision, config validation."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from trainables.data import augment as aug_mod
from trainables.data.augment import (
    AugmentConfig,
    BatchAugment,
    eval_transform,
    relic_global,
    relic_local,
    supcon_augment,
    to_lab,
    to_ycbcr,
)

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
ZERO, ONE = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


def identity(size: int = 16, **changes) -> AugmentConfig:
    """A config that changes nothing: full-image crop at the input size, every op off."""
    base = AugmentConfig(size=size, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)
    return base.replace(**changes)


def images(b: int = 8, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def draws(b: int, seed: int) -> torch.Tensor:
    """The uniforms BatchAugment draws for a batch of ``b`` from ``gen(seed)``."""
    return torch.rand(b, aug_mod._DRAWS, generator=gen(seed))


def test_shape_dtype_device() -> None:
    out = BatchAugment(supcon_augment(12), mean=MEAN, std=STD)(images(5, 20), gen())
    assert out.shape == (5, 3, 12, 12) and out.dtype == torch.float32 and out.device.type == "cpu"
    assert out.is_contiguous()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_device_and_generators() -> None:
    x = images(4).cuda()
    a = BatchAugment(relic_global(16), mean=MEAN, std=STD)
    on_gpu = a(x, torch.Generator(device="cuda").manual_seed(0))
    from_cpu = a(x, gen(0))  # CPU generator, CUDA images: the draws are moved over
    assert on_gpu.device.type == "cuda" and from_cpu.device.type == "cuda"
    assert torch.allclose(from_cpu.cpu(), a(x.cpu(), gen(0)), atol=1e-4)


def test_uint8_and_float_inputs_agree() -> None:
    x = images()
    a = BatchAugment(relic_global(16), mean=MEAN, std=STD)
    assert torch.allclose(a(x, gen(3)), a(x.float() / 255, gen(3)), atol=1e-5)


def test_same_seed_same_output_other_seed_differs_and_state_restores() -> None:
    a = BatchAugment(relic_global(16), mean=MEAN, std=STD)
    x = images()
    assert torch.equal(a(x, gen(1)), a(x, gen(1)))
    assert not torch.allclose(a(x, gen(1)), a(x, gen(2)))
    g = gen(5)
    a(x, g)
    state = g.get_state()
    expected = a(x, g)
    g.set_state(state)
    assert torch.equal(a(x, g), expected)


def test_generator_advances_the_same_whatever_the_config() -> None:
    g1, g2 = gen(0), gen(0)
    BatchAugment(identity(), mean=MEAN, std=STD)(images(), g1)
    BatchAugment(relic_global(16), mean=MEAN, std=STD)(images(), g2)
    assert torch.equal(g1.get_state(), g2.get_state())


def test_every_sample_gets_its_own_crop() -> None:
    x = images(1).expand(16, -1, -1, -1)
    out = BatchAugment(AugmentConfig(size=16, jitter_p=0, grayscale_p=0), mean=MEAN, std=STD)(x, gen())
    flat = out.flatten(1)
    assert all(not torch.allclose(flat[i], flat[j]) for i in range(16) for j in range(i))


def test_crop_geometry_on_a_ramp() -> None:
    """Bilinear sampling of a horizontal ramp is exact, so each row reads the crop box's x range back."""
    size = 32
    ramp = torch.linspace(0, 1, size).expand(64, 3, size, size)
    cfg = identity(size, scale=(0.25, 0.25), ratio=(1.0, 1.0))  # every crop is 16 x 16
    out = BatchAugment(cfg, mean=ZERO, std=ONE)(ramp, gen())
    # Output column j samples x = left + (j + 0.5) * 16 / 32 - 0.5; columns 1..30 stay inside the image (the outer
    # ones may sample a quarter pixel beyond the border, which is clamped).
    span = out[:, 0, :, -2] - out[:, 0, :, 1]  # 29 * 16 / 32 pixels of a ramp rising 1 / 31 per pixel
    assert torch.allclose(span, torch.full_like(span, 14.5 / 31), atol=1e-5)
    left = out[:, 0, 0, 1] * 31 - 0.25  # left edge of each crop, in pixels
    assert torch.allclose(left, left.round(), atol=1e-4) and left.min() >= 0 and left.max() <= 16
    assert len(left.round().unique()) > 5


def test_crop_area_and_ratio_stay_in_range() -> None:
    cfg = AugmentConfig(size=8)
    u = draws(4096, 0)
    b = BatchAugment(cfg, mean=MEAN, std=STD)
    captured = {}
    orig = aug_mod.F.affine_grid

    def spy(theta, *args, **kwargs):
        captured["theta"] = theta
        return orig(theta, *args, **kwargs)

    aug_mod.F.affine_grid = spy
    try:
        b._crop_flip(torch.zeros(4096, 3, 32, 32), u)
    finally:
        aug_mod.F.affine_grid = orig
    w, h = captured["theta"][:, 0, 0].abs() * 32, captured["theta"][:, 1, 1] * 32
    area, ratio = w * h / 1024, w / h
    assert area.min() >= 0.2 - 0.05 and area.max() <= 1.0
    assert ratio.min() >= 3 / 4 - 0.1 and ratio.max() <= 4 / 3 + 0.1
    assert (w == w.round()).all() and (h == h.round()).all()


def test_identity_config_reproduces_eval_transform() -> None:
    x = images(6, 16)
    out = BatchAugment(identity(16), mean=MEAN, std=STD)(x, gen())
    assert torch.allclose(out, eval_transform(x, mean=MEAN, std=STD), atol=1e-5)


def test_flip_only_equals_torch_flip() -> None:
    x = images(32, 16)
    plain = eval_transform(x, mean=MEAN, std=STD)
    always = BatchAugment(identity(16, flip_p=1.0), mean=MEAN, std=STD)(x, gen())
    assert torch.allclose(always, torch.flip(plain, dims=[-1]), atol=1e-5)
    half = BatchAugment(identity(16, flip_p=0.5), mean=MEAN, std=STD)(x, gen())
    flipped = (half - torch.flip(plain, dims=[-1])).flatten(1).abs().amax(1) < 1e-5
    kept = (half - plain).flatten(1).abs().amax(1) < 1e-5
    assert (flipped ^ kept).all() and 0 < flipped.sum() < 32
    assert torch.equal(flipped, draws(32, 0)[:, aug_mod._FLIP] < 0.5)


def test_normalised_output_has_zero_mean_unit_std() -> None:
    x = images(64, 16)
    f = x.float() / 255
    mean, std = f.mean((0, 2, 3)).tolist(), f.std((0, 2, 3), unbiased=False).tolist()
    out = BatchAugment(identity(16), mean=mean, std=std)(x, gen())
    assert torch.allclose(out.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(out.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)


def test_grayscale_makes_channels_equal() -> None:
    out = BatchAugment(identity(16, grayscale_p=1.0), mean=ZERO, std=ONE)(images(), gen())
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    assert torch.allclose(out, TF.rgb_to_grayscale(images().float() / 255, num_output_channels=3), atol=1e-6)


def test_solarize_inverts_above_threshold() -> None:
    x = images().float() / 255
    out = BatchAugment(identity(16, solarize_p=1.0, solarize_threshold=0.5), mean=ZERO, std=ONE)(x, gen())
    assert torch.allclose(out, torch.where(x >= 0.5, 1 - x, x), atol=1e-6)
    assert torch.allclose(out, TF.solarize(x, 0.5), atol=1e-6)


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("jitter", [(0.4, 0.4, 0.4, 0.1), (0.8, 0.8, 0.8, 0.2), (0.5, 0.0, 0.9, 0.0)])
def test_jitter_matches_torchvision_per_sample_order(jitter: tuple[float, ...], channels: int) -> None:
    """Each sample: torchvision's adjust_* with that sample's factors, in that sample's order. On a 1-channel image
    torchvision applies brightness and contrast and leaves saturation and hue as they are; so must we."""
    b, seed = 24, 7
    x = images(b, 8)[:, :channels].float() / 255
    mean, std = (0.0,) * channels, (1.0,) * channels
    out = BatchAugment(identity(8, jitter=jitter, jitter_p=0.7), mean=mean, std=std)(x, gen(seed))
    u = draws(b, seed)
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    orders = set()
    for i in range(b):
        expected = x[i]
        if u[i, aug_mod._JIT_P] < 0.7:
            f = u[i, aug_mod._JIT_F]
            factors = [max(0, 1 - a) + (1 + a - max(0, 1 - a)) * float(f[k]) for k, a in enumerate(jitter[:3])]
            factors.append(jitter[3] * (2 * float(f[3]) - 1))
            order = u[i, aug_mod._JIT_ORDER].argsort().tolist()
            orders.add(tuple(order))
            for k in order:
                expected = ops[k](expected, factors[k])
        assert torch.allclose(out[i], expected, atol=2e-5), i
    assert len(orders) > 3
    if jitter[0] or jitter[1]:
        assert not torch.allclose(out, x), "jitter changed nothing"


def test_blur_matches_torchvision() -> None:
    b, seed = 8, 2
    x = images(b, 32).float() / 255
    cfg = identity(32, blur_p=0.5, blur_sigma=(0.5, 2.0))
    assert cfg.kernel_size == 3
    cfg = dataclasses.replace(cfg, blur_kernel=7)
    out = BatchAugment(cfg, mean=ZERO, std=ONE)(x, gen(seed))
    u = draws(b, seed)
    for i in range(b):
        if u[i, aug_mod._BLUR_P] < 0.5:
            sigma = 0.5 + 1.5 * float(u[i, aug_mod._BLUR_SIGMA])
            expected = TF.gaussian_blur(x[i], [7, 7], [sigma, sigma])
        else:
            expected = x[i]
        assert torch.allclose(out[i], expected, atol=1e-5), i


def test_single_channel_images_keep_their_shape_through_every_op() -> None:
    x = images(4)[:, :1]
    out = BatchAugment(relic_global(16), mean=(0.5,), std=(0.2,))(x, gen())
    assert out.shape == (4, 1, 16, 16) and torch.isfinite(out).all()
    gray_only = BatchAugment(identity(16, grayscale_p=1.0), mean=(0.0,), std=(1.0,))(x, gen())
    assert torch.allclose(gray_only, x.float() / 255, atol=1e-6)  # grayscale of a gray image is the image


def test_presets() -> None:
    s = supcon_augment(32)
    assert (s.scale, s.jitter, s.jitter_p, s.grayscale_p, s.flip_p, s.blur_p) == ((0.2, 1.0), (0.4, 0.4, 0.4, 0.1),
                                                                                  0.8, 0.2, 0.5, 0.0)
    g = relic_global(96)
    assert (g.scale, g.jitter, g.blur_p, g.solarize_p, g.kernel_size) == ((0.1, 1.0), (0.8, 0.8, 0.8, 0.2), 1.0,
                                                                          0.2, 9)
    loc = relic_local(96)
    assert (loc.size, loc.scale, loc.kernel_size, loc.solarize_p) == (41, (0.05, 1.0), 9, 0.0)
    assert relic_local(32).size == 13
    with pytest.raises(ValueError, match="size"):
        relic_local(2)


@pytest.mark.parametrize("changes, field", [
    (dict(size=0), "size"),
    (dict(size=True), "size"),
    (dict(scale=(0.5, 0.2)), "scale"),
    (dict(scale=(0.0, 1.0)), "scale"),
    (dict(scale=(0.2, 1.5)), "scale"),
    (dict(scale=(0.2,)), "scale"),
    (dict(ratio=(0.0, 1.0)), "ratio"),
    (dict(flip_p=1.5), "flip_p"),
    (dict(jitter_p=-0.1), "jitter_p"),
    (dict(grayscale_p=float("nan")), "grayscale_p"),
    (dict(jitter=(0.4, 0.4, 0.4, 0.6)), "jitter"),
    (dict(jitter=(-0.1, 0.4, 0.4, 0.1)), "jitter"),
    (dict(jitter=(0.4, 0.4)), "jitter"),
    (dict(blur_p=2.0), "blur_p"),
    (dict(blur_sigma=(0.0, 1.0)), "blur_sigma"),
    (dict(blur_kernel=4), "blur_kernel"),
    (dict(solarize_p=-1.0), "solarize_p"),
    (dict(solarize_threshold=1.5), "solarize_threshold"),
])
def test_invalid_config_raises_naming_the_field(changes: dict, field: str) -> None:
    kwargs = dict(size=8) | changes
    with pytest.raises(ValueError, match=rf"`[^`]*{field}[^`]*`.*{field}="):
        AugmentConfig(**kwargs)


def test_lists_are_coerced_to_tuples() -> None:
    cfg = AugmentConfig(size=8, scale=[0.3, 1], jitter=[0, 0, 0, 0])
    assert cfg.scale == (0.3, 1.0) and hash(cfg)


@pytest.mark.parametrize("kwargs, match", [
    (dict(mean=(0.5, 0.5), std=STD), "len"),
    (dict(mean=MEAN, std=(0.2, 0.0, 0.2)), "std"),
    (dict(mean=(0.5, float("inf"), 0.5), std=STD), "mean"),
])
def test_invalid_stats_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BatchAugment(supcon_augment(8), **kwargs)
    with pytest.raises(ValueError, match=match):
        eval_transform(images(), **kwargs)


def test_invalid_inputs_raise() -> None:
    a = BatchAugment(supcon_augment(8), mean=MEAN, std=STD)
    with pytest.raises(ValueError, match=r"images\.shape\[1\] == len\(mean\)"):
        a(images()[:, :2], gen())
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        a(images()[0], gen())
    with pytest.raises(ValueError, match="dtype"):
        a(images().long(), gen())
    with pytest.raises(TypeError, match="generator"):
        a(images(), 0)


def test_eval_transform() -> None:
    x = images()
    out = eval_transform(x, mean=MEAN, std=STD)
    expected = (x.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    assert out.dtype == torch.float32 and torch.allclose(out, expected, atol=1e-6)


def test_lab_known_values() -> None:
    rgb = torch.tensor([[1, 1, 1], [0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0.5]]).float()
    lab = to_lab(rgb.T.reshape(1, 3, 6, 1))[0, :, :, 0].T
    expected = torch.tensor([[100, 0, 0], [0, 0, 0], [53.24, 80.09, 67.20], [87.73, -86.18, 83.18],
                             [32.30, 79.19, -107.86], [53.39, 0, 0]])
    assert torch.allclose(lab, expected, atol=0.02)


def test_ycbcr_known_values() -> None:
    rgb = torch.tensor([[1, 1, 1], [0, 0, 0], [1, 0, 0]]).float()
    ycc = to_ycbcr(rgb.T.reshape(1, 3, 3, 1))[0, :, :, 0].T
    expected = torch.tensor([[235, 128, 128], [16, 128, 128], [81.481, 90.203, 240.0]])
    assert torch.allclose(ycc, expected, atol=1e-3)
    with pytest.raises(ValueError, match="float RGB"):
        to_ycbcr(images())


def test_replace_overrides_one_field_and_validates() -> None:
    aug = supcon_augment(32)
    changed = aug.replace(scale=(0.08, 1.0))
    assert changed.scale == (0.08, 1.0) and changed.size == aug.size and aug.scale != changed.scale
    with pytest.raises(ValueError, match="scale"):
        aug.replace(scale=(0.0, 1.0))
