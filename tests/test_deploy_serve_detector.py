"""Serving a detector, through a real uvicorn server on loopback with a small trained detector."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from deploy_helpers import batch_histogram
from detection_helpers import CLASSES, INPUT, SCENES, detector_model_dir, scene_png, truth
from PIL import Image

from sparkvision.config import ServeSettings
from sparkvision.deploy.serve import create_app
from sparkvision.detection.boxes import box_iou
from sparkvision.detection.runner import DetectorRunner
from sparkvision.testing.server import live_server

SETTINGS = ServeSettings(max_files=3, max_pixels=4_000_000, batch_window_ms=250, threads=1)


@pytest.fixture(scope="module")
def server():
    with live_server(create_app(detector_model_dir(), SETTINGS)) as live:
        yield live


def post(url: str, files: list[tuple[str, bytes]], query: str = "") -> httpx.Response:
    parts = [("files", (name, data, "image/png")) for name, data in files]
    return httpx.post(f"{url}/v1/predict{query}", files=parts, timeout=120)


def expect_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"], error
    return error


def assert_same_boxes(got: list[dict], expected: list[dict], tolerance: float = 1e-3) -> None:
    """The same detections in the same order, coordinates and scores equal to within ``tolerance``."""
    assert [b["label"] for b in got] == [b["label"] for b in expected]
    for b, e in zip(got, expected, strict=True):
        assert [b[k] for k in ("score", "xmin", "ymin", "xmax", "ymax")] == pytest.approx(
            [e[k] for k in ("score", "xmin", "ymin", "xmax", "ymax")], abs=tolerance)


def best_boxes(boxes: list[dict]) -> dict[str, np.ndarray]:
    """The most confident box of each label (boxes come most confident first)."""
    best: dict[str, np.ndarray] = {}
    for b in boxes:
        best.setdefault(b["label"], np.array([b["xmin"], b["ymin"], b["xmax"], b["ymax"]]))
    return best


def test_boxes_are_in_the_uploaded_images_pixels_and_equal_the_runners(server):
    # The landscape scene twice its size and the portrait one as it is: letterboxing pads
    # different axes and the scales differ, so only a correct mapping lands on the truths.
    uploads = [("wide.png", scene_png(0, scale=2)), ("tall.png", scene_png(1))]
    truths = [truth(0, scale=2), truth(1)]
    response = post(server.url, uploads)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["task"] == "detect" and body["model"] == "tiny-detector"
    assert body["score_threshold"] == 0.3 and body["max_boxes"] == 100
    got = body["predictions"]
    assert [p["filename"] for p in got] == ["wide.png", "tall.png"]
    assert [(p["width"], p["height"]) for p in got] == [(480, 320), (SCENES[1][0], SCENES[1][1])]

    for prediction, truth_boxes in zip(got, truths, strict=True):
        best = best_boxes(prediction["boxes"])
        assert set(best) == set(CLASSES)
        for label, box in truth_boxes.items():
            assert box_iou(best[label][None], box[None])[0, 0] > 0.8, (label, best[label], box)
        scores = [b["score"] for b in prediction["boxes"]]
        assert scores == sorted(scores, reverse=True) and min(scores) >= 0.3

    # The same bytes through DetectorRunner (the same decoder, run here, unbatched) give the same boxes.
    runner = DetectorRunner.from_model_dir(detector_model_dir(), settings=SETTINGS.detection(), threads=1)
    records, errors = runner.detect_records([data for _, data in uploads])
    assert errors == [None, None]
    for prediction, expected in zip(got, records, strict=True):
        assert_same_boxes(prediction["boxes"], expected)

    # The scene at its own size: the model sees nearly the same input, and the boxes come back half as large.
    small = best_boxes(post(server.url, [("small.png", scene_png(0))]).json()["predictions"][0]["boxes"])
    for label, box in best_boxes(got[0]["boxes"]).items():
        assert box == pytest.approx(2 * small[label], abs=6.0), label  # one input pixel is 5 pixels here

    # The raw-body form answers like the multipart one.
    raw = httpx.post(f"{server.url}/v1/predict", content=uploads[1][1], headers={"content-type": "image/png"},
                     timeout=120).json()
    assert raw["predictions"][0]["filename"] is None
    assert_same_boxes(raw["predictions"][0]["boxes"], got[1]["boxes"], 0.0)


def test_query_parameters_change_the_decoding_of_one_request(server):
    upload = [("wide.png", scene_png(0))]
    default = post(server.url, upload).json()["predictions"][0]["boxes"]
    one = post(server.url, upload, "?max_boxes=1").json()
    assert one["max_boxes"] == 1 and one["predictions"][0]["boxes"] == [default[0]]
    low = post(server.url, upload, "?score_threshold=0.05&iou_threshold=0.9").json()
    assert low["score_threshold"] == 0.05 and low["iou_threshold"] == 0.9
    assert len(low["predictions"][0]["boxes"]) > len(default)  # more candidates survive a laxer decoding
    assert all(b["score"] >= 0.05 for b in low["predictions"][0]["boxes"])
    top = default[0]["score"]
    strict = post(server.url, upload, f"?score_threshold={min(1.0, top + 1e-4)}").json()
    assert strict["predictions"][0]["boxes"] == []
    # Without the query the server's defaults hold again.
    assert post(server.url, upload).json()["predictions"][0]["boxes"] == default


def test_bad_images_and_malformed_requests_get_4xx_and_the_server_keeps_serving(server):
    url = server.url
    good = ("wide.png", scene_png(0))
    broken = bytearray(scene_png(1))
    start = broken.index(b"IDAT") + 20
    for k in range(start, start + 60):
        broken[k] ^= 0x5A
    cases = [
        (lambda: post(url, [good, ("notes.png", b"no pixels here")]), 415, "not_an_image"),
        (lambda: post(url, [("broken.png", bytes(broken))]), 422, "corrupt_image"),
        (lambda: post(url, [("empty.png", b"")]), 400, "empty_file"),
        (lambda: post(url, [good] * 4), 413, "too_many_files"),
        (lambda: httpx.post(f"{url}/v1/predict", json={"image": "x"}), 415, "unsupported_media_type"),
        (lambda: httpx.post(f"{url}/v1/predict", content=b"", headers={"content-type": "image/png"}), 400,
         "empty_body"),
        (lambda: httpx.post(f"{url}/v1/predict", content=b"garbage", headers={"content-type": "multipart/form-data"}),
         400, "bad_multipart"),
    ]
    for send, status, code in cases:
        error = expect_error(send(), status, code)
        if code == "not_an_image":  # one bad image among good ones: the bad one is named
            assert [(f["index"], f["filename"], f["code"]) for f in error["files"]] == [(1, "notes.png", code)]
        assert post(url, [good]).status_code == 200
    for query in ("?score_threshold=1.5", "?score_threshold=-0.1", "?iou_threshold=0", "?max_boxes=0",
                  "?max_boxes=many"):
        response = post(url, [good], query)
        assert response.status_code == 422 and "Traceback" not in response.text, (query, response.text)
    # A huge flat image is refused before decoding.
    flat = io.BytesIO()
    Image.new("RGB", (3000, 2000), (20, 20, 20)).save(flat, "PNG")
    expect_error(post(url, [("flat.png", flat.getvalue())]), 413, "too_many_pixels")
    assert post(url, [good]).status_code == 200


def test_concurrent_requests_share_model_calls_and_get_their_own_boxes(server):
    uploads = [scene_png(i % 2, scale=1 + i % 3) for i in range(6)]
    alone = [post(server.url, [("x.png", data)]).json()["predictions"][0] for data in uploads]
    before_calls, before_images = batch_histogram(server.url)
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda data: post(server.url, [("x.png", data)]), uploads))
    assert all(r.status_code == 200 for r in responses)
    calls, images = batch_histogram(server.url)
    assert images - before_images == 6
    assert calls - before_calls < 6, "6 concurrent requests should share ONNX Runtime calls"
    for response, expected in zip(responses, alone, strict=True):  # batched = alone, each its own image's boxes
        got = response.json()["predictions"][0]
        assert (got["width"], got["height"]) == (expected["width"], expected["height"])
        assert_same_boxes(got["boxes"], expected["boxes"])


def test_model_info_says_detect(server):
    info = httpx.get(f"{server.url}/v1/models").json()["models"][0]
    assert info["task"] == "detect" and info["kind"] == "detector"
    assert info["classes"] == CLASSES and info["num_classes"] == 2 and info["input_size"] == [3, INPUT, INPUT]
    assert info["preprocess"]["resize_mode"] == "letterbox"
    assert httpx.get(f"{server.url}/readyz").json()["status"] == "ready"
