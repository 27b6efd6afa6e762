"""Batch augmentations: seeded, vectorised, and each one does what it says on real pixels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sparkvision.config.training import AugmentConfig
from sparkvision.training.augment import (
    BatchAugmenter,
    affine_theta,
    color_jitter,
    cutmix,
    erase,
    gaussian_blur,
    gaussian_kernels,
    hflip,
    mixup,
    one_hot,
    sample_erase_boxes,
    sample_resized_crops,
    warp,
)

EVERYTHING = AugmentConfig(
    crop_prob=1.0, hflip_prob=0.5, rotation_degrees=15, brightness=0.3, contrast=0.3, saturation=0.3,
    blur_prob=0.5, erase_prob=0.5, mixup_alpha=0.4, cutmix_alpha=1.0,
)


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """Real images: sklearn's 8x8 digits scaled to [0, 1], upsampled to 16x16, as RGB."""
    from sklearn.datasets import load_digits

    images = torch.from_numpy(load_digits().images[:12].astype(np.float32) / 16.0).unsqueeze(1)
    images = F.interpolate(images, size=(16, 16), mode="nearest")
    return images.repeat(1, 3, 1, 1) * torch.tensor([1.0, 0.7, 0.4]).view(1, 3, 1, 1)


def test_same_seed_same_batch_other_seed_other_batch(digits):
    aug = BatchAugmenter(EVERYTHING, num_classes=10)
    y = torch.arange(len(digits)) % 10
    x1, t1 = aug(digits.clone(), y, np.random.default_rng(7))
    x2, t2 = aug(digits.clone(), y, np.random.default_rng(7))
    x3, _ = aug(digits.clone(), y, np.random.default_rng(8))
    assert torch.equal(x1, x2) and torch.equal(t1, t2)
    assert not torch.equal(x1, x3)
    assert x1.shape == digits.shape and torch.isfinite(x1).all()
    assert x1.min() >= 0 and x1.max() <= 1


def test_all_off_is_identity(digits):
    assert not AugmentConfig().any
    y = torch.arange(len(digits)) % 10
    x, t = BatchAugmenter(AugmentConfig(), 10)(digits.clone(), y, np.random.default_rng(0))
    assert torch.equal(x, digits) and torch.equal(t, y)


def test_hflip_mirrors_only_the_chosen_images(digits):
    flip = np.array([i % 3 == 0 for i in range(len(digits))])
    out = hflip(digits, flip)
    for i in range(len(digits)):
        want = digits[i].flip(-1) if flip[i] else digits[i]
        assert torch.equal(out[i], want)


def test_identity_warp_keeps_the_image(digits):
    n = len(digits)
    theta = affine_theta(np.ones(n), np.ones(n), np.zeros(n), np.zeros(n), np.zeros(n), 16, 16)
    assert torch.allclose(warp(digits, theta), digits, atol=1e-5)


def test_rotation_by_90_degrees_is_an_exact_counter_clockwise_turn(digits):
    n = len(digits)
    theta = affine_theta(np.ones(n), np.ones(n), np.zeros(n), np.zeros(n), np.full(n, 90.0), 16, 16)
    # torch.rot90 over (H, W) with k=1 turns counter-clockwise as displayed (row 0 at the top).
    assert torch.allclose(warp(digits, theta), torch.rot90(digits, 1, dims=(2, 3)), atol=1e-5)


def test_crop_of_the_top_left_quadrant_is_that_quadrant_enlarged(digits):
    n = len(digits)
    theta = affine_theta(np.full(n, 0.5), np.full(n, 0.5), np.full(n, -0.5), np.full(n, -0.5), np.zeros(n), 16, 16)
    got = warp(digits, theta)
    want = F.interpolate(digits[:, :, :8, :8], size=(16, 16), mode="bilinear", align_corners=False)
    # Inside the box they agree; at its edge the warp blends in the neighbouring pixel
    # (zeros beyond the image) where interpolate clamps.
    assert torch.allclose(got[:, :, 1:-1, 1:-1], want[:, :, 1:-1, 1:-1], atol=1e-5)


def test_resized_crop_boxes_respect_scale_and_stay_inside():
    rng = np.random.default_rng(3)
    w, h, cx, cy = sample_resized_crops(rng, 500, 20, 30, scale=(0.3, 0.6), ratio=(3 / 4, 4 / 3))
    area = w * h
    cropped = area < 1.0  # the rest fell back to the whole frame
    assert cropped.mean() > 0.9
    assert np.all((area[cropped] >= 0.3 - 1e-9) & (area[cropped] <= 0.6 + 1e-9))
    assert np.all(w <= 1) and np.all(h <= 1)
    # The box [c - s, c + s] in normalised coordinates lies within [-1, 1].
    assert np.all(cx - w >= -1 - 1e-9) and np.all(cx + w <= 1 + 1e-9)
    assert np.all(cy - h >= -1 - 1e-9) and np.all(cy + h <= 1 + 1e-9)


def test_color_jitter_factors(digits):
    n = len(digits)
    ones = np.ones(n)
    assert torch.allclose(color_jitter(digits.clone(), ones, ones, ones), digits, atol=1e-6)
    darker = color_jitter(digits.clone(), np.full(n, 0.5), ones, ones)
    assert torch.allclose(darker, digits * 0.5, atol=1e-6)
    flat = color_jitter(digits.clone(), ones, np.zeros(n), ones)
    # Contrast 0: every pixel is the image's mean grey.
    grey = (digits * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    assert torch.allclose(flat, grey.mean(dim=(1, 2, 3), keepdim=True).expand_as(flat), atol=1e-6)
    desaturated = color_jitter(digits.clone(), ones, ones, np.zeros(n))
    assert torch.allclose(desaturated[:, 0], desaturated[:, 1], atol=1e-6)
    assert torch.allclose(desaturated[:, 0:1], grey, atol=1e-6)


def test_gaussian_blur_matches_a_hand_built_kernel_and_keeps_constants(digits):
    sigma = 1.0
    x = digits[:2]
    got = gaussian_blur(x, np.array([sigma, 0.0]))
    assert torch.equal(got[1], x[1])  # sigma 0: untouched
    radius = 3
    k1 = torch.tensor([math.exp(-0.5 * (i / sigma) ** 2) for i in range(-radius, radius + 1)])
    k1 = k1 / k1.sum()
    k2 = torch.outer(k1, k1)
    padded = F.pad(x[:1], (radius,) * 4, mode="reflect")
    want = F.conv2d(padded, k2.view(1, 1, 7, 7).repeat(3, 1, 1, 1), groups=3)
    assert torch.allclose(got[:1], want, atol=1e-5)
    constant = torch.full((1, 1, 12, 12), 0.3)
    assert torch.allclose(gaussian_blur(constant, np.array([1.3])), constant, atol=1e-6)
    assert np.allclose(gaussian_kernels(np.array([0.7, 2.0]), 4).sum(axis=1), 1.0)


def test_erasing_replaces_exactly_the_box(digits):
    n = len(digits)
    apply = np.arange(n) % 2 == 0
    boxes = sample_erase_boxes(np.random.default_rng(1), apply, 16, 16, (0.1, 0.2), (0.5, 2.0))
    fill = torch.full_like(digits, -1.0)
    out = erase(digits, boxes, fill)
    for i in range(n):
        y0, y1, x0, x1 = boxes[i]
        if not apply[i]:
            assert torch.equal(out[i], digits[i])
            continue
        area = (y1 - y0) * (x1 - x0) / 256
        assert 0.05 <= area <= 0.3  # rounding of a 16x16 grid around the 0.1-0.2 target
        assert torch.all(out[i, :, y0:y1, x0:x1] == -1.0)
        outside = torch.ones(16, 16, dtype=torch.bool)
        outside[y0:y1, x0:x1] = False
        assert torch.equal(out[i][:, outside], digits[i][:, outside])


def test_mixup_is_a_convex_combination_of_images_and_targets(digits):
    y = torch.arange(len(digits)) % 10
    perm = np.roll(np.arange(len(digits)), 1)
    x, t = mixup(digits, one_hot(y, 10), 0.7, perm)
    assert torch.allclose(x, 0.7 * digits + 0.3 * digits[torch.as_tensor(perm)])
    assert torch.allclose(t.sum(1), torch.ones(len(digits)))
    assert torch.allclose(t[0, y[0]], torch.tensor(0.7)) and torch.allclose(t[0, y[perm[0]]], torch.tensor(0.3))


def test_cutmix_pastes_the_box_and_weighs_targets_by_area(digits):
    y = torch.arange(len(digits)) % 10
    perm = np.roll(np.arange(len(digits)), 1)
    x, t, lam = cutmix(digits, one_hot(y, 10), (2, 10, 4, 8), perm)
    assert lam == pytest.approx(1 - 8 * 4 / 256)
    assert torch.equal(x[0, :, 2:10, 4:8], digits[perm[0], :, 2:10, 4:8])
    assert torch.equal(x[0, :, 10:, :], digits[0, :, 10:, :])
    assert torch.allclose(t[0, y[0]], torch.tensor(lam)) and torch.allclose(t[0, y[perm[0]]], torch.tensor(1 - lam))


def test_mixing_gives_soft_targets_that_sum_to_one(digits):
    y = torch.arange(len(digits)) % 10
    aug = BatchAugmenter(AugmentConfig(mixup_alpha=0.4, cutmix_alpha=1.0), 10)
    for seed in range(6):
        _, t = aug(digits.clone(), y, np.random.default_rng(seed))
        assert t.shape == (len(digits), 10) and t.dtype == torch.float32
        assert torch.allclose(t.sum(1), torch.ones(len(digits)), atol=1e-6)
