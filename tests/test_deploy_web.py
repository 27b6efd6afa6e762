"""The web page, driven end to end in headless Chromium (Debian's /usr/bin/chromium via Playwright)."""

from __future__ import annotations

import numpy as np
import pytest
from deploy_helpers import imagenet_model_dir, live_server, photos

from sparkvision.config import ServeSettings
from sparkvision.deploy.serve import create_app
from sparkvision.models.model_dir import load_card, onnx_path
from sparkvision.models.runtime import OnnxModel
from sparkvision.preprocess import ImagePreprocessor

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
