"""The HTTP service, through a real uvicorn server on loopback with the real ImageNet model."""

from __future__ import annotations

import hashlib
import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from deploy_helpers import batch_histogram, imagenet_model_dir, link_photos, photos
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from sparkvision.config import ServeSettings
from sparkvision.deploy.serve import create_app
from sparkvision.models.model_dir import load_card, onnx_path
from sparkvision.models.runtime import OnnxModel
from sparkvision.preprocess import ImagePreprocessor
from sparkvision.testing.server import live_server

SETTINGS = ServeSettings(max_body_bytes=1_500_000, max_pixels=4_000_000, max_files=3, batch_window_ms=250,
                         max_batch=32, threads=2)


@pytest.fixture(scope="module")
def server():
    with live_server(create_app(imagenet_model_dir(), SETTINGS)) as live:
        yield live


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    return next(path for path, label in photos("val", 1) if label == "tench").read_bytes()


def png(width: int, height: int, noise: bool = True) -> bytes:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8) if noise else \
        np.full((height, width, 3), 128, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def corrupt_png() -> bytes:
    data = bytearray(png(64, 64))
    start = data.index(b"IDAT") + 20
    for k in range(start, start + 180):
        data[k] ^= 0x5A
    return bytes(data)


NO_FILE_BODY = b'--xyz\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n--xyz--\r\n'


def expect_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text and 'File "' not in response.text
    body = response.json()
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body["error"]


def good_request(url: str, jpeg: bytes) -> None:
    response = httpx.post(f"{url}/v1/predict", files={"files": ("tench.jpg", jpeg, "image/jpeg")}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["prediction"].startswith("tench")


def test_each_bad_request_gets_a_precise_4xx_and_the_server_keeps_serving(server, jpeg):
    url = f"{server.url}/v1/predict"
    post = httpx.Client(timeout=60).post
    cases = [
        # wrong request content type
        (lambda: post(url, json={"image": "x"}), 415, "unsupported_media_type"),
        (lambda: post(url, content=b"a=1", headers={"content-type": "text/plain"}), 415, "unsupported_media_type"),
        # empty body
        (lambda: post(url, content=b"", headers={"content-type": "image/jpeg"}), 400, "empty_body"),
        # bytes that are no image
        (lambda: post(url, content=b"just some text, no pixels", headers={"content-type": "application/octet-stream"}),
         415, "not_an_image"),
        # a PNG whose compressed data is broken, and a JPEG cut short
        (lambda: post(url, content=corrupt_png(), headers={"content-type": "image/png"}), 422, "corrupt_image"),
        (lambda: post(url, content=jpeg[:2000], headers={"content-type": "image/jpeg"}), 422, "truncated_image"),
        # larger than max_body_bytes: declared, and streamed without a length (chunked)
        (lambda: post(url, content=b"\xff" * 1_600_000, headers={"content-type": "image/jpeg"}), 413,
         "body_too_large"),
        (lambda: post(url, content=(b"\xff" * 100_000 for _ in range(16)), headers={"content-type": "image/jpeg"}),
         413, "body_too_large"),
        # 3000 x 2000 = 6 MP of a flat colour: a small file above max_pixels
        (lambda: post(url, content=png(3000, 2000, noise=False), headers={"content-type": "image/png"}), 413,
         "too_many_pixels"),
        # four files where three are allowed
        (lambda: post(url, files=[("files", (f"{i}.jpg", jpeg, "image/jpeg")) for i in range(4)]), 413,
         "too_many_files"),
        # multipart that cannot be parsed, and multipart with a text field but no file
        (lambda: post(url, content=b"garbage", headers={"content-type": "multipart/form-data"}), 400,
         "bad_multipart"),
        (lambda: post(url, content=NO_FILE_BODY, headers={"content-type": "multipart/form-data; boundary=xyz"}),
         400, "no_files"),
        # an empty file part
        (lambda: post(url, files={"files": ("empty.jpg", b"", "image/jpeg")}), 400, "empty_file"),
    ]
    for send, status, code in cases:
        expect_error(send(), status, code)
        good_request(server.url, jpeg)

    # One bad image among good ones: the whole request is refused, the bad file named.
    mixed = [("files", ("a.jpg", jpeg, "image/jpeg")), ("files", ("b.txt", b"not an image", "text/plain"))]
    error = expect_error(post(url, files=mixed), 415, "not_an_image")
    assert [(f["index"], f["filename"], f["code"]) for f in error["files"]] == [(1, "b.txt", "not_an_image")]
    # Invalid parameters are 422 from validation, still without a stack trace.
    response = post(f"{url}?top_k=0", content=jpeg, headers={"content-type": "image/jpeg"})
    assert response.status_code == 422 and "Traceback" not in response.text
    good_request(server.url, jpeg)

    metrics = {s.labels["code"]: s.value for f in text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text)
               if f.name == "sparkvision_rejected" for s in f.samples if s.name.endswith("_total")}
    assert metrics["body_too_large"] == 2 and metrics["too_many_files"] == 1 and metrics["not_an_image"] == 2


def test_predictions_equal_onnx_runtime_run_directly(server):
    chosen = photos("val", 1)[:3]
    files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p, _ in chosen]
    response = httpx.post(f"{server.url}/v1/predict?top_k=10", files=files, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()

    model_dir = imagenet_model_dir()
    card = load_card(model_dir)
    batch = ImagePreprocessor(card.preprocess)([p.read_bytes() for p, _ in chosen])
    logits = OnnxModel(onnx_path(model_dir), threads=1).run(batch.tensor, ["logits"])[0].astype(np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)

    assert [p["filename"] for p in body["predictions"]] == [p.name for p, _ in chosen]
    for row, got in zip(probs, body["predictions"], strict=True):
        order = np.argsort(-row)[:10]
        assert [t["label"] for t in got["top_k"]] == [card.labels[i] for i in order]
        assert np.allclose([t["probability"] for t in got["top_k"]], row[order], atol=1e-5)
        assert got["prediction"] == card.labels[order[0]]
    # The raw-body form gives the same answer as the multipart one.
    raw = httpx.post(f"{server.url}/v1/predict?top_k=10", content=chosen[0][0].read_bytes(),
                     headers={"content-type": "image/jpeg"}, timeout=60).json()
    assert raw["predictions"][0]["top_k"] == body["predictions"][0]["top_k"]


def test_concurrent_requests_are_batched_into_fewer_model_calls(server):
    chosen = photos("val", 1)[:8]
    before_calls, before_images = batch_histogram(server.url)

    def send(item):
        path, _ = item
        return httpx.post(f"{server.url}/v1/predict", content=path.read_bytes(),
                          headers={"content-type": "image/jpeg"}, timeout=120)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(send, chosen))
    assert all(r.status_code == 200 for r in responses)
    calls, images = batch_histogram(server.url)
    assert images - before_images == 8
    assert calls - before_calls < 8, "8 concurrent requests should share ONNX Runtime calls"
    # Batched answers are the answers each image gets alone.
    alone = send(chosen[3]).json()["predictions"][0]
    assert responses[3].json()["predictions"][0]["top_k"][0]["label"] == alone["top_k"][0]["label"]
    assert responses[3].json()["predictions"][0]["top_k"][0]["probability"] == pytest.approx(
        alone["top_k"][0]["probability"], abs=1e-5)


def test_model_health_and_metrics_endpoints(server):
    models = httpx.get(f"{server.url}/v1/models").json()["models"]
    assert len(models) == 1
    info = models[0]
    assert info["name"] == "efficientnet_lite0" and info["num_classes"] == 1000 == len(info["classes"])
    assert info["task"] == "classify"
    assert info["input_size"] == [3, 224, 224]
    assert info["version"] == hashlib.sha256(onnx_path(imagenet_model_dir()).read_bytes()).hexdigest()[:12]
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    text = httpx.get(f"{server.url}/metrics").text
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"sparkvision_requests", "sparkvision_request_latency_seconds", "sparkvision_batch_size"} <= names
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/static/app.js" in page.text
    for asset in ("/", "/static/app.js", "/static/style.css"):  # nothing from a CDN: every asset is local
        text = httpx.get(f"{server.url}{asset}").text
        assert "http://" not in text and "https://" not in text and "//cdn" not in text
    assert httpx.get(f"{server.url}/nope").status_code == 404


def test_a_model_made_by_fit_is_served_as_it_is_and_answers_like_its_spark_pipeline(spark, fitted_imagenette,
                                                                                      tmp_path):
    from sparkvision.inference.predict import load_model
    from sparkvision.io import load_images

    model_dir = fitted_imagenette["model_dir"]
    labels = load_card(model_dir).labels
    folder = link_photos(tmp_path, "val", 1)
    in_spark = {r["path"].rsplit("/", 1)[-1]: r
                for r in load_model(model_dir).predictions(load_images(spark, str(folder))).collect()}
    with live_server(create_app(model_dir, SETTINGS)) as live:
        info = httpx.get(f"{live.url}/v1/models").json()["models"][0]
        assert info["kind"] == "spark_pipeline" and info["classes"] == labels
        for path, _ in photos("val", 1):
            response = httpx.post(f"{live.url}/v1/predict?top_k={len(labels)}", content=path.read_bytes(),
                                  headers={"content-type": "image/jpeg"}, timeout=60)
            assert response.status_code == 200, response.text
            got = response.json()["predictions"][0]
            want = in_spark[path.name]
            assert got["prediction"] == want["prediction"]
            served = {t["label"]: t["probability"] for t in got["top_k"]}
            assert np.abs(np.array([served[label] for label in labels]) - want["probability"]).max() < 1e-4
