"""Batch augmentations that run on the training ranks, vectorised over the whole batch.

Every transform works on a float batch ``(N, C, H, W)`` in [0, 1] (before
normalisation) on whatever device the batch is on, and takes its random parameters as
arguments; :class:`BatchAugmenter` draws them from one ``numpy.random.Generator``, so a
seed fixes every crop, angle, factor and mask. The ranks seed it from
(seed, epoch, rank), which is why augmentation needs no state in a checkpoint.

Geometry (random resized crop, rotation) is one affine warp per image through
``grid_sample``; flip is an exact mirror; blur is a separable convolution with a
kernel per image (grouped conv); erasing and CutMix are boolean masks. MixUp and CutMix
return soft targets ``(N, classes)``; every loss in :mod:`.losses` takes either kind.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from sparkvision.config.training import AugmentConfig


def affine_theta(
    scale_w: np.ndarray, scale_h: np.ndarray, center_x: np.ndarray, center_y: np.ndarray,
    angle_deg: np.ndarray, height: int, width: int,
) -> np.ndarray:
    """(N, 2, 3) ``affine_grid`` matrices: sample a box of relative size (scale_w, scale_h)
    centred at normalised (center_x, center_y), rotated by ``angle_deg`` in pixel space."""
    angle = np.deg2rad(angle_deg)
    cos, sin = np.cos(angle), np.sin(angle)
    # Rotation in pixels expressed in normalised coordinates: D^-1 R D with D = diag(W/2, H/2).
    aspect = width / height
    r00, r01 = cos, -sin / aspect
    r10, r11 = sin * aspect, cos
    theta = np.zeros((len(scale_w), 2, 3), dtype=np.float32)
    theta[:, 0, 0] = scale_w * r00
    theta[:, 0, 1] = scale_w * r01
    theta[:, 1, 0] = scale_h * r10
    theta[:, 1, 1] = scale_h * r11
    theta[:, 0, 2] = center_x
    theta[:, 1, 2] = center_y
    return theta


def warp(x: torch.Tensor, theta: np.ndarray) -> torch.Tensor:
    """Resample every image by its affine matrix (bilinear, zeros outside)."""
    grid = F.affine_grid(torch.as_tensor(theta, device=x.device, dtype=x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def hflip(x: torch.Tensor, flip: np.ndarray) -> torch.Tensor:
    """Mirror the images where ``flip`` is true."""
    mask = torch.as_tensor(flip, device=x.device).view(-1, 1, 1, 1)
    return torch.where(mask, x.flip(-1), x)


def sample_resized_crops(
    rng: np.random.Generator, n: int, height: int, width: int,
    scale: tuple[float, float], ratio: tuple[float, float], attempts: int = 10,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """torchvision's RandomResizedCrop box choice, for n images at once.

    Returns relative width/height and normalised centre of each box; an image whose
    ``attempts`` draws all fall outside keeps the whole frame, as torchvision's fallback does
    for in-range aspect ratios."""
    area = height * width
    target = rng.uniform(scale[0], scale[1], size=(n, attempts)) * area
    log_ratio = rng.uniform(math.log(ratio[0]), math.log(ratio[1]), size=(n, attempts))
    aspect = np.exp(log_ratio)
    w = np.sqrt(target * aspect)
    h = np.sqrt(target / aspect)
    ok = (w <= width) & (h <= height)
    first = np.where(ok.any(axis=1), ok.argmax(axis=1), -1)
    rows = np.arange(n)
    w_px = np.where(first >= 0, w[rows, first.clip(0)], width)
    h_px = np.where(first >= 0, h[rows, first.clip(0)], height)
    x0 = rng.uniform(0, 1, size=n) * (width - w_px)
    y0 = rng.uniform(0, 1, size=n) * (height - h_px)
    center_x = (x0 + w_px / 2) / width * 2 - 1
    center_y = (y0 + h_px / 2) / height * 2 - 1
    return w_px / width, h_px / height, center_x, center_y


def color_jitter(x: torch.Tensor, brightness: np.ndarray, contrast: np.ndarray, saturation: np.ndarray) -> torch.Tensor:
    """torchvision's brightness, contrast and saturation adjustments with one factor per image."""

    def factor(values: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(values, device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)

    x = (x * factor(brightness)).clamp_(0, 1)
    grey = _grey(x)
    mean = grey.mean(dim=(1, 2, 3), keepdim=True)
    x = (mean + (x - mean) * factor(contrast)).clamp_(0, 1)
    if x.shape[1] == 3:
        grey = _grey(x)
        x = (grey + (x - grey) * factor(saturation)).clamp_(0, 1)
    return x


def _grey(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def gaussian_kernels(sigmas: np.ndarray, radius: int) -> np.ndarray:
    """(N, 2*radius+1) normalised 1-D Gaussians; sigma 0 gives the identity kernel."""
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    safe = np.where(sigmas > 0, sigmas, 1.0)[:, None]
    kernels = np.exp(-0.5 * (offsets[None, :] / safe) ** 2)
    kernels[sigmas <= 0] = (offsets == 0).astype(np.float64)
    return (kernels / kernels.sum(axis=1, keepdims=True)).astype(np.float32)


def gaussian_blur(x: torch.Tensor, sigmas: np.ndarray) -> torch.Tensor:
    """Blur image i with sigma ``sigmas[i]`` (pixels; 0 leaves it unchanged), reflect-padded."""
    n, c, h, w = x.shape
    radius = int(min(math.ceil(3 * float(sigmas.max(initial=0.0))), (min(h, w) - 1) // 2))
    if radius < 1:
        return x
    kernels = torch.as_tensor(gaussian_kernels(sigmas, radius), device=x.device, dtype=x.dtype)
    weight = kernels.repeat_interleave(c, dim=0)  # (N*C, K)
    flat = x.reshape(1, n * c, h, w)
    flat = F.pad(flat, (radius, radius, 0, 0), mode="reflect")
    flat = F.conv2d(flat, weight.view(n * c, 1, 1, -1), groups=n * c)
    flat = F.pad(flat, (0, 0, radius, radius), mode="reflect")
    flat = F.conv2d(flat, weight.view(n * c, 1, -1, 1), groups=n * c)
    return flat.view(n, c, h, w)


def box_mask(boxes: np.ndarray, height: int, width: int, device: torch.device) -> torch.Tensor:
    """(N, 1, H, W) bool masks of pixel boxes ``(y0, y1, x0, x1)``, end-exclusive."""
    b = torch.as_tensor(boxes, device=device, dtype=torch.long)
    ys = torch.arange(height, device=device).view(1, height, 1)
    xs = torch.arange(width, device=device).view(1, 1, width)
    inside = ((ys >= b[:, 0, None, None]) & (ys < b[:, 1, None, None])
              & (xs >= b[:, 2, None, None]) & (xs < b[:, 3, None, None]))
    return inside.unsqueeze(1)


def erase(x: torch.Tensor, boxes: np.ndarray, fill: torch.Tensor) -> torch.Tensor:
    """Replace each image's box by ``fill`` (same shape as ``x``); an empty box erases nothing."""
    mask = box_mask(boxes, x.shape[2], x.shape[3], x.device)
    return torch.where(mask, fill, x)


def sample_erase_boxes(
    rng: np.random.Generator, apply: np.ndarray, height: int, width: int,
    scale: tuple[float, float], ratio: tuple[float, float],
) -> np.ndarray:
    """(N, 4) boxes for random erasing; rows where ``apply`` is false are empty."""
    n = len(apply)
    area = rng.uniform(scale[0], scale[1], size=n) * height * width
    aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), size=n))
    h = np.clip(np.round(np.sqrt(area * aspect)), 1, height).astype(np.int64)
    w = np.clip(np.round(np.sqrt(area / aspect)), 1, width).astype(np.int64)
    y0 = (rng.uniform(0, 1, size=n) * (height - h + 1)).astype(np.int64)
    x0 = (rng.uniform(0, 1, size=n) * (width - w + 1)).astype(np.int64)
    boxes = np.stack([y0, y0 + h, x0, x0 + w], axis=1)
    boxes[~apply] = 0
    return boxes


def one_hot(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(y, num_classes).to(torch.float32)


def mixup(x: torch.Tensor, targets: torch.Tensor, lam: float, perm: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """``lam * x + (1 - lam) * x[perm]``, and the same for the (soft) targets."""
    index = torch.as_tensor(perm, device=x.device)
    return lam * x + (1 - lam) * x[index], lam * targets + (1 - lam) * targets[index]


def cutmix(
    x: torch.Tensor, targets: torch.Tensor, box: tuple[int, int, int, int], perm: np.ndarray,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Paste ``box`` (y0, y1, x0, x1) of image ``perm[i]`` into image i; targets mix by the
    pasted area. Returns the mixed batch, targets and the kept fraction ``lam``."""
    index = torch.as_tensor(perm, device=x.device)
    y0, y1, x0, x1 = box
    mixed = x.clone()
    mixed[:, :, y0:y1, x0:x1] = x[index, :, y0:y1, x0:x1]
    lam = 1.0 - (y1 - y0) * (x1 - x0) / (x.shape[2] * x.shape[3])
    return mixed, lam * targets + (1 - lam) * targets[index], lam


def cutmix_box(rng: np.random.Generator, lam: float, height: int, width: int) -> tuple[int, int, int, int]:
    """The CutMix paper's box: area (1 - lam), centre uniform, clipped to the image."""
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return y0, y1, x0, x1


class BatchAugmenter:
    """Applies the enabled augmentations of an :class:`AugmentConfig` to one batch.

    ``__call__(x, y, rng)`` takes a float batch in [0, 1] and integer labels, and returns
    the augmented batch and targets: the labels unchanged, or soft targets
    ``(N, num_classes)`` when MixUp/CutMix mixed the batch.
    """

    def __init__(self, config: AugmentConfig, num_classes: int) -> None:
        self.config = config
        self.num_classes = num_classes

    def __call__(self, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        n, c, h, w = x.shape
        if cfg.crop_prob > 0 or cfg.rotation_degrees > 0:
            sw, sh, cx, cy = np.ones(n), np.ones(n), np.zeros(n), np.zeros(n)
            if cfg.crop_prob > 0:
                crop = rng.uniform(size=n) < cfg.crop_prob
                bw, bh, bx, by = sample_resized_crops(rng, n, h, w, cfg.crop_scale, cfg.crop_ratio)
                sw, sh = np.where(crop, bw, 1.0), np.where(crop, bh, 1.0)
                cx, cy = np.where(crop, bx, 0.0), np.where(crop, by, 0.0)
            angle = rng.uniform(-cfg.rotation_degrees, cfg.rotation_degrees, size=n)
            x = warp(x, affine_theta(sw, sh, cx, cy, angle, h, w))
        if cfg.hflip_prob > 0:
            x = hflip(x, rng.uniform(size=n) < cfg.hflip_prob)
        if cfg.brightness > 0 or cfg.contrast > 0 or cfg.saturation > 0:
            x = color_jitter(
                x,
                rng.uniform(1 - cfg.brightness, 1 + cfg.brightness, size=n),
                rng.uniform(max(0.0, 1 - cfg.contrast), 1 + cfg.contrast, size=n),
                rng.uniform(max(0.0, 1 - cfg.saturation), 1 + cfg.saturation, size=n),
            )
        if cfg.blur_prob > 0:
            sigmas = rng.uniform(cfg.blur_sigma[0], cfg.blur_sigma[1], size=n)
            x = gaussian_blur(x, np.where(rng.uniform(size=n) < cfg.blur_prob, sigmas, 0.0))
        if cfg.erase_prob > 0:
            boxes = sample_erase_boxes(rng, rng.uniform(size=n) < cfg.erase_prob, h, w, cfg.erase_scale,
                                       cfg.erase_ratio)
            gen = torch.Generator(device=x.device).manual_seed(int(rng.integers(2**62)))
            x = erase(x, boxes, torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype))
        targets: torch.Tensor = y
        if (cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0) and rng.uniform() < cfg.mix_prob:
            use_cutmix = cfg.cutmix_alpha > 0 and (cfg.mixup_alpha <= 0 or rng.uniform() < cfg.cutmix_switch_prob)
            perm = rng.permutation(n)
            soft = one_hot(y, self.num_classes)
            if use_cutmix:
                lam = float(rng.beta(cfg.cutmix_alpha, cfg.cutmix_alpha))
                x, targets, _ = cutmix(x, soft, cutmix_box(rng, lam, h, w), perm)
            else:
                lam = float(rng.beta(cfg.mixup_alpha, cfg.mixup_alpha))
                x, targets = mixup(x, soft, lam, perm)
        return x, targets
