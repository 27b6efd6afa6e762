"""A self-contained HTML report opened in headless Chromium (Debian's /usr/bin/chromium via Playwright).

Shared by the classification and detection report tests: both load a local ``report.html``, must fetch
nothing from the network, and check that their screenshots hold real content.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]


@contextmanager
def offline_page(html_path: Path, width: int = 1280, height: int = 900) -> Iterator:
    """The loaded page of ``html_path``; when the block ends, asserts that nothing was fetched but files and data."""
    from playwright.sync_api import sync_playwright

    remote: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("request", lambda req: remote.append(req.url)
                    if not req.url.startswith(("file:", "data:")) else None)
            page.goto(Path(html_path).as_uri())
            page.wait_for_load_state("load")
            yield page
        finally:
            browser.close()
    assert remote == []  # self-contained: nothing fetched from anywhere


def assert_real_picture(path: Path, min_colours: int) -> None:
    """A screenshot that is not blank and holds more than ``min_colours`` colours (plots, photos, not flat boxes)."""
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert pixels.std() > 10, path
    colours = len(np.unique(pixels.reshape(-1, 3)[::7], axis=0))
    assert colours > min_colours, (path, colours)
