#!/usr/bin/env python
"""The README's picture of the web page: serve a model directory, upload photos in headless
Chromium, and save a screenshot of the results.

    .venv/bin/python scripts/serve_screenshot.py --model models/bccd \\
        --image ../shared/data/bccd/JPEGImages/BloodImage_00000.jpg --out docs/detection_serve.png

The server is the real one (``sparkvision.deploy.serve.create_app`` under uvicorn on a free
loopback port, through ``sparkvision.testing.server.live_server``) and the browser is Debian's
/usr/bin/chromium through Playwright, as in tests/test_deploy_web.py. The PNG is reduced to a 256-colour palette to keep it small.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model directory to serve")
    parser.add_argument("--image", required=True, action="append", help="photo to upload (repeatable)")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--width", type=int, default=1000, help="browser viewport width (default 1000)")
    parser.add_argument("--height", type=int, default=760, help="browser viewport height (default 760)")
    parser.add_argument("--colours", type=int, default=256, help="palette size of the PNG (default 256)")
    args = parser.parse_args(argv)

    from PIL import Image
    from playwright.sync_api import sync_playwright

    from sparkvision.config import ServeSettings
    from sparkvision.deploy.serve import create_app
    from sparkvision.testing.server import live_server

    with live_server(create_app(args.model, ServeSettings(threads=2))) as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": args.width, "height": args.height}, device_scale_factor=1)
        page.goto(server.url + "/")
        page.wait_for_function("document.body.dataset.task !== undefined")
        for done, image in enumerate(args.image, 1):
            page.set_input_files("#files", image)
            page.wait_for_function(f"document.querySelectorAll('.card:not([data-state=pending])').length >= {done}",
                                   timeout=120_000)
        shot = page.screenshot(full_page=True)
        browser.close()
    picture = Image.open(io.BytesIO(shot)).convert("RGB").quantize(args.colours, method=Image.Quantize.MEDIANCUT)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(out, optimize=True)
    print(f"{out}: {picture.width}x{picture.height}, {out.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
