"""Detection building blocks: box ops, letterbox geometry, box-aware augmentation, FCOS targets, decode."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from sparkvision.config import PreprocessConfig
from sparkvision.detection.augment import DetectionAugment, DetectionAugmenter
from sparkvision.detection.boxes import batched_nms, box_iou, generalized_iou_loss, nms
from sparkvision.detection.loss import FCOSLoss, assign_targets
from sparkvision.detection.postprocess import DecodeSettings, Letterbox, decode
from sparkvision.preprocess import ImagePreprocessor
from sparkvision.preprocess.transforms import letterbox_placement


def test_box_iou_hand_worked():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[5, 5, 15, 15], [20, 20, 30, 30], [0, 0, 10, 10], [0, 0, 0, 10]])
    assert box_iou(a, b)[0].tolist() == pytest.approx([25 / 175, 0.0, 1.0, 0.0])


def _reference_nms(boxes, scores, thr):
    """Textbook O(n^2) NMS written independently: visit by score, drop what overlaps a kept box."""
    kept = []
    for i in sorted(range(len(scores)), key=lambda k: (-scores[k], k)):
        if all(box_iou(boxes[i:i + 1], boxes[j:j + 1])[0, 0] <= thr for j in kept):
            kept.append(i)
    return kept


def test_nms_matches_reference_on_random_boxes():
    rng = np.random.default_rng(0)
    for _ in range(20):
        xy = rng.uniform(0, 100, size=(40, 2))
        wh = rng.uniform(5, 40, size=(40, 2))
        boxes = np.hstack([xy, xy + wh])
        scores = rng.choice(np.linspace(0.1, 1.0, 10), size=40)  # ties on purpose
        assert nms(boxes, scores, 0.5).tolist() == _reference_nms(boxes, scores, 0.5)


def test_batched_nms_keeps_overlapping_boxes_of_other_classes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10]], dtype=float)
    keep = batched_nms(boxes, np.array([0.9, 0.8, 0.7]), np.array([0, 0, 1]), 0.5)
    assert keep.tolist() == [0, 2]


def test_giou_loss_zero_for_identical_and_above_one_for_disjoint():
    a = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10]])
    b = torch.tensor([[0.0, 0, 10, 10], [20, 0, 30, 10]])
    loss = generalized_iou_loss(a, b)
    assert loss[0].item() == pytest.approx(0.0, abs=1e-6)
    assert loss[1].item() == pytest.approx(1 + 10 / 30, abs=1e-6)  # IoU 0, enclosure 300, union 200


def _jpeg_with_rect(width, height, rect, colour=(255, 0, 0)) -> bytes:
    img = Image.new("RGB", (width, height), (0, 0, 0))
    img.paste(Image.new("RGB", (rect[2] - rect[0], rect[3] - rect[1]), colour), rect[:2])
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _bright_bbox(arr: np.ndarray, threshold: int = 128) -> list[int]:
    ys, xs = np.nonzero(arr.max(axis=-1) > threshold)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


@pytest.mark.parametrize("size", [(640, 480), (300, 700), (1000, 1000)])
def test_letterbox_maps_boxes_to_the_pixels_they_cover(size):
    width, height = size
    rect = (width // 5, height // 3, width // 2, height // 2 + 10)
    config = PreprocessConfig.preset("inception", size=(320, 320), resize_mode="letterbox")
    arr, displayed = ImagePreprocessor(config).load_sized(_jpeg_with_rect(width, height, rect))
    assert displayed == (width, height)
    new_w, new_h, pad_x, pad_y = letterbox_placement(width, height, config)
    geometry = Letterbox(new_w / width, new_h / height, pad_x, pad_y, width, height)
    mapped = geometry.to_input(np.array([rect], dtype=float))[0]
    assert np.abs(np.array(_bright_bbox(arr)) - mapped).max() <= 1.5
    assert np.allclose(geometry.to_original(mapped[None])[0], rect)


def test_jpeg_draft_keeps_the_full_size_geometry():
    img = Image.new("RGB", (1999, 1501), (0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, "JPEG")
    config = PreprocessConfig.preset("inception", size=(256, 256), resize_mode="letterbox")
    arr, displayed = ImagePreprocessor(config).load_sized(buf.getvalue())
    assert displayed == (1999, 1501) and arr.shape == (256, 256, 3)


def test_augmentation_moves_boxes_with_the_pixels():
    h = w = 128
    x = torch.zeros(6, 3, h, w)
    boxes, labels = [], []
    for i in range(6):
        x0, y0 = 20 + 5 * i, 30 + 3 * i
        x[i, :, y0:y0 + 40, x0:x0 + 30] = 1.0
        boxes.append(np.array([[x0, y0, x0 + 30, y0 + 40]], dtype=float))
        labels.append(np.array([i % 2]))
    aug = DetectionAugmenter(DetectionAugment(hflip_prob=0.5, vflip_prob=0.5, scale_prob=1.0, zoom=(0.7, 1.4),
                                              brightness=0, contrast=0, saturation=0, min_visible=0.99))
    out, out_boxes, out_labels = aug(x, boxes, labels, np.random.default_rng(3))
    checked = 0
    for i in range(6):
        if len(out_boxes[i]) == 0:  # pushed out of the frame: the pixels must be mostly gone too
            assert (out[i].amax(0) > 0.5).float().mean() < 0.05
            continue
        found = _bright_bbox(out[i].permute(1, 2, 0).numpy() * 255)
        assert np.abs(np.array(found) - out_boxes[i][0]).max() <= 2.0
        assert out_labels[i].tolist() == [i % 2]
        checked += 1
    assert checked >= 3


def test_fcos_targets_hand_worked():
    points = torch.tensor([[50.0, 50.0], [12.0, 12.0], [50.0, 50.0]])
    strides = torch.tensor([8.0, 8.0, 16.0])
    ranges = torch.tensor([[0.0, 64.0], [0.0, 64.0], [64.0, 128.0]])
    box = torch.tensor([[30.0, 20.0, 80.0, 90.0]])
    t = assign_targets(points, strides, ranges, [box], [torch.tensor([2])], num_classes=3)
    # Point 0 is at the centre region of the box, with max distance 40 (in level 0's range);
    # point 1 is outside the box; point 2 is on a level whose range the box does not reach.
    assert t.labels[0].tolist() == [2, 3, 3]
    assert t.ltrb[0, 0].tolist() == [20.0, 30.0, 30.0, 40.0]
    assert t.centerness[0, 0].item() == pytest.approx(((20 / 30) * (30 / 40)) ** 0.5)


def test_fcos_learns_one_image():
    """A small randomly initialised FCOS fits one image's boxes: the loss and targets are consistent."""
    from sparkvision.models.fcos import DetectorExport, FCOSLite

    torch.manual_seed(0)
    from sparkvision.models.efficientnet import EfficientNetLite

    backbone = EfficientNetLite.from_name("efficientnet-lite0", num_classes=10)
    model = FCOSLite(backbone, num_classes=2, fpn_channels=32, head_convs=1)
    x = torch.zeros(1, 3, 128, 128)
    x[:, :, 20:60, 30:90] = 1.0
    x[:, 0, 80:110, 10:40] = 1.0
    boxes = [torch.tensor([[30.0, 20.0, 90.0, 60.0], [10.0, 80.0, 40.0, 110.0]])]
    labels = [torch.tensor([0, 1])]
    loss_fn = FCOSLoss(2, model.strides, model.size_ranges)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for module in model.backbone.modules():  # as training does: batch norms keep ImageNet statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    first = None
    for _ in range(120):
        loss, _ = loss_fn(model(x), boxes, labels)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first
    exported = DetectorExport(model, 128, 128).eval()
    with torch.no_grad():
        b, s = exported(x)
    dets = decode(b[0].numpy(), s[0].numpy(), DecodeSettings(score_threshold=0.2))
    best = {int(c): box for box, c in zip(dets.boxes[::-1], dets.classes[::-1], strict=True)}
    assert set(best) == {0, 1}
    assert box_iou(best[0][None], boxes[0][0:1].numpy())[0, 0] > 0.5
    assert box_iou(best[1][None], boxes[0][1:2].numpy())[0, 0] > 0.5


def test_decode_threshold_nms_cap_and_letterbox():
    boxes = np.array([[10, 10, 50, 50], [12, 12, 50, 50], [100, 100, 140, 140], [0, 0, 5, 5]], dtype=float)
    scores = np.array([[0.9, 0.0], [0.8, 0.0], [0.0, 0.7], [0.01, 0.02]])
    lb = Letterbox(0.5, 0.5, 0.0, 10.0, 400, 300)
    dets = decode(boxes, scores, DecodeSettings(score_threshold=0.05, iou_threshold=0.5), lb)
    assert dets.classes.tolist() == [0, 1]
    assert dets.boxes[0].tolist() == [20.0, 0.0, 100.0, 80.0]
    assert decode(boxes, scores, DecodeSettings(max_boxes=1)).scores.tolist() == [0.9]
    assert len(decode(boxes, scores, DecodeSettings(score_threshold=0.95))) == 0
