"""The web page, driven end to end in headless Chromium (Debian's /usr/bin/chromium via Playwright)."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from deploy_helpers import imagenet_model_dir, photos
from detection_helpers import CLASSES, detector_model_dir, scene_png
from PIL import Image

from sparkvision.config import ServeSettings
from sparkvision.deploy.serve import create_app
from sparkvision.models.model_dir import load_card, onnx_path
from sparkvision.models.runtime import OnnxModel
from sparkvision.preprocess import ImagePreprocessor
from sparkvision.testing.server import live_server

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.browser


def _top1(paths) -> list[str]:
    """What ONNX Runtime alone predicts for each photo (the page must show the same)."""
    model_dir = imagenet_model_dir()
    card = load_card(model_dir)
    batch = ImagePreprocessor(card.preprocess)([p.read_bytes() for p in paths])
    logits = OnnxModel(onnx_path(model_dir), threads=1).run(batch.tensor, ["logits"])[0]
    return [card.labels[i] for i in np.argmax(logits, axis=1)]


def test_page_classifies_an_uploaded_photo_and_reports_a_bad_file(tmp_path):
    from playwright.sync_api import sync_playwright

    # A real photo whose class ONNX Runtime gets right, so the label read off the page means something.
    tench = [p for p, label in photos("val", 5) if label == "tench"]
    expected = _top1(tench)
    photo, label = next((p, lab) for p, lab in zip(tench, expected, strict=True) if lab.startswith("tench"))
    not_image = tmp_path / "notes.jpg"
    not_image.write_bytes(b"these are notes, not pixels")

    with live_server(create_app(imagenet_model_dir(), ServeSettings(threads=2))) as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(server.url + "/")
            page.wait_for_function("document.getElementById('model').textContent.includes('1000 classes')")

            page.set_input_files("#files", str(photo))
            page.wait_for_selector(".card[data-state='done']", timeout=60_000)
            card = page.locator(".card[data-state='done']").first
            assert card.locator("[data-testid='prediction']").inner_text() == label
            assert card.locator(".bars li").count() == 5
            assert card.locator(".bars li .bar-label").first.inner_text() == label
            assert card.locator("img").get_attribute("alt") == photo.name
            widths = card.locator(".bars .fill").evaluate_all("els => els.map(e => parseFloat(e.style.width))")
            assert widths == sorted(widths, reverse=True) and widths[0] > 50

            page.set_input_files("#files", str(not_image))
            page.wait_for_selector(".card[data-state='error']", timeout=60_000)
            error = page.locator(".card[data-state='error'] .error").inner_text()
            assert "not_an_image" in error
            assert page.locator(".card").count() == 2  # the good result is still shown
        finally:
            browser.close()


def test_page_draws_a_detectors_boxes_over_the_uploaded_image(tmp_path):
    from playwright.sync_api import sync_playwright

    # Four times the scene's size (960 x 640), so the page shows it scaled down (max-height 70vh of 720).
    photo = tmp_path / "scene.png"
    photo.write_bytes(scene_png(0, scale=4))
    palette = {"red": (0xE0, 0x31, 0x31), "green": (0x19, 0x71, 0xC2)}  # the page's first two class colours

    with live_server(create_app(detector_model_dir(), ServeSettings(threads=1))) as server, \
            sync_playwright() as pw:
        expected = httpx.post(f"{server.url}/v1/predict", content=photo.read_bytes(),
                              headers={"content-type": "image/png"}, timeout=120).json()["predictions"][0]
        assert {b["label"] for b in expected["boxes"]} == set(CLASSES)
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 720}, device_scale_factor=1)
            page.goto(server.url + "/")
            page.wait_for_function("document.getElementById('model').textContent.includes('detector')")

            page.set_input_files("#files", str(photo))
            page.wait_for_selector(".card.detect[data-state='done']", timeout=60_000)
            card = page.locator(".card.detect[data-state='done']").first
            page.evaluate("document.fonts.ready")
            img = card.locator(".frame img").bounding_box()
            assert img is not None
            scale = img["width"] / expected["width"]
            assert 0.3 < scale < 0.95 and img["height"] / expected["height"] == pytest.approx(scale, rel=0.01)

            boxes = card.locator(".box")
            assert boxes.count() == len(expected["boxes"])
            assert card.locator(".detections li").count() == len(expected["boxes"])
            counts = {label: sum(b["label"] == label for b in expected["boxes"]) for label in CLASSES}
            summary = card.locator("[data-testid='summary']").inner_text()
            assert all(f"{label} {n}" in summary for label, n in counts.items()), summary

            shot = np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB")).astype(int)
            for k, want in enumerate(expected["boxes"]):
                el = boxes.nth(k)
                assert el.get_attribute("data-label") == want["label"]
                assert want["label"] in el.locator(".tag").inner_text()
                got = el.bounding_box()
                assert got is not None
                # Where the box is drawn = where the server's box falls on the displayed image.
                assert got["x"] == pytest.approx(img["x"] + want["xmin"] * scale, abs=1.5)
                assert got["y"] == pytest.approx(img["y"] + want["ymin"] * scale, abs=1.5)
                assert got["width"] == pytest.approx((want["xmax"] - want["xmin"]) * scale, abs=1.5)
                assert got["height"] == pytest.approx((want["ymax"] - want["ymin"]) * scale, abs=1.5)
                # And it is really drawn: its left edge, half-way down, has its class's colour.
                x, y = int(got["x"] + 1), int(got["y"] + got["height"] / 2)
                assert np.abs(shot[y, x] - palette[want["label"]]).max() <= 12, (want["label"], shot[y, x])
        finally:
            browser.close()
