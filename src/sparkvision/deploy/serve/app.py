"""The HTTP service: one FastAPI app per model directory, a classifier or a detector.

``POST /v1/predict`` takes one or several images (multipart ``files``/``file`` parts,
or the raw bytes as the body with an ``image/*`` or ``application/octet-stream``
content type) and answers, for a classifier, the top-k classes of each (``?top_k=``)
and, for a detector (card kind ``detector``), the boxes of each in the uploaded image's
own pixels (``?score_threshold=&iou_threshold=&max_boxes=``, defaults from
:class:`~sparkvision.config.ServeSettings`), decoded by the one detection decoder
(:meth:`sparkvision.detection.runner.DetectorRunner.decode_outputs`). Every limit is
checked before the work it protects: the declared length before reading, the read bytes
while reading, the pixel count before decoding. Bad requests get a 4xx with a JSON body
``{"error": {"code", "message", "files"?}}`` and never a stack trace:

=====  ============================================================================
 400   ``empty_body``, ``no_files``, ``bad_multipart``, ``empty_file``
 413   ``body_too_large``, ``too_many_files``, ``too_many_pixels``
 415   ``unsupported_media_type`` (request content type), ``not_an_image``, ``unsupported_image``
 422   ``corrupt_image``, ``truncated_image``, invalid query parameters
=====  ============================================================================

A request with several images fails as a whole if any image is bad, naming each bad
file, so a client never mistakes a partial answer for a full one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from sparkvision import __version__
from sparkvision.config import DecodeSettings, ServeSettings
from sparkvision.deploy.serve.batching import MicroBatcher
from sparkvision.deploy.serve.metrics import ServeMetrics
from sparkvision.io.errors import ErrorKind, ImageError
from sparkvision.models.model_dir import load_card
from sparkvision.models.runner import ClassifierRunner

if TYPE_CHECKING:
    from sparkvision.detection.runner import DetectorRunner

log = logging.getLogger(__name__)

#: How each per-image failure is answered: (HTTP status, error code).
IMAGE_ERRORS: dict[ErrorKind, tuple[int, str]] = {
    ErrorKind.EMPTY_FILE: (400, "empty_file"),
    ErrorKind.NOT_AN_IMAGE: (415, "not_an_image"),
    ErrorKind.UNSUPPORTED: (415, "unsupported_image"),
    ErrorKind.CORRUPT: (422, "corrupt_image"),
    ErrorKind.TRUNCATED: (422, "truncated_image"),
    ErrorKind.TOO_MANY_PIXELS: (413, "too_many_pixels"),
    ErrorKind.TOO_LARGE: (413, "body_too_large"),
    ErrorKind.UNREADABLE: (400, "empty_file"),
}
RAW_TYPES = ("application/octet-stream",)


class APIError(Exception):
    def __init__(self, status: int, code: str, message: str, files: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.files = status, code, message, files

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.files:
            error["files"] = self.files
        return {"error": error}


# ---------------------------------------------------------------- response models


class LabelProbability(BaseModel):
    label: str
    probability: float


class ImagePrediction(BaseModel):
    filename: str | None
    prediction: str
    top_k: list[LabelProbability]


class PredictResponse(BaseModel):
    model: str
    version: str
    predictions: list[ImagePrediction]


class Box(BaseModel):
    """One detection, in pixels of the uploaded image as displayed (EXIF orientation applied)."""

    label: str
    score: float
    xmin: float
    ymin: float
    xmax: float
    ymax: float


class ImageDetections(BaseModel):
    filename: str | None
    #: The uploaded image's displayed size, the frame of its boxes.
    width: int
    height: int
    #: Most confident first.
    boxes: list[Box]


class DetectResponse(BaseModel):
    model: str
    version: str
    task: Literal["detect"] = "detect"
    #: The decoding this answer used (the server's defaults unless the query set them).
    score_threshold: float
    iou_threshold: float
    max_boxes: int
    predictions: list[ImageDetections]


class ModelInfo(BaseModel):
    name: str
    version: str
    kind: str
    #: "classify" (answers top_k) or "detect" (answers boxes).
    task: Literal["classify", "detect"]
    architecture: str
    classes: list[str]
    num_classes: int
    input_size: list[int]
    preprocess: dict[str, Any]
    created: str
    sparkvision_version: str


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


DETECTOR_OUTPUTS = ("boxes", "scores")


def is_detector(model: ClassifierRunner | DetectorRunner) -> bool:
    return model.card is not None and model.card.kind == "detector"


def model_info(model: ClassifierRunner | DetectorRunner) -> ModelInfo:
    card = model.card
    assert card is not None, "the server loads its model from a model directory"
    return ModelInfo(
        name=card.name, version=model.version, kind=card.kind, task="detect" if is_detector(model) else "classify",
        architecture=card.architecture,
        classes=list(card.labels), num_classes=len(card.labels), input_size=model.input_shape,
        preprocess=card.preprocess.to_dict(), created=card.created, sparkvision_version=card.sparkvision_version,
    )


def load_runner(model_dir: str | Path, settings: ServeSettings) -> ClassifierRunner | DetectorRunner:
    """The model directory's classifier or detector (by its card's kind), one ONNX Runtime call per
    micro-batch, decoding within the pixel limit."""
    options: dict[str, Any] = dict(
        threads=settings.threads or os.cpu_count() or 1, batch_size=settings.max_batch,
        decode=DecodeSettings(max_pixels=settings.max_pixels) if settings.max_pixels else None,
    )
    if load_card(model_dir).kind == "detector":
        # Imported only for a detector: the box operations import torch.
        from sparkvision.detection.runner import DetectorRunner

        return DetectorRunner.from_model_dir(model_dir, settings=settings.detection(), **options)
    if settings.tta is not None:
        options["tta"] = settings.tta
    return ClassifierRunner.from_model_dir(model_dir, **options)


def inference(model: ClassifierRunner | DetectorRunner):
    """What one micro-batch runs: a classifier's probabilities, a detector's raw (boxes, scores)."""
    if is_detector(model):
        return lambda tensor: tuple(model.run(tensor, DETECTOR_OUTPUTS))
    return model.predict_proba


# ---------------------------------------------------------------- reading requests


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known or seen to exceed ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise APIError(400, "bad_request", "Content-Length is not a number") from None
        if size > limit:
            raise APIError(413, "body_too_large", f"the body has {size:,} bytes; the limit is {limit:,}")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise APIError(413, "body_too_large", f"the body exceeds the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def read_images(request: Request, settings: ServeSettings) -> list[tuple[str | None, bytes]]:
    """(filename, bytes) of each image in the request."""
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    multipart = media == "multipart/form-data"
    if not (multipart or media.startswith("image/") or media in RAW_TYPES):
        raise APIError(
            415, "unsupported_media_type",
            f"content type {media or '(none)'!r} is not accepted: send multipart/form-data with image files, "
            "or the image bytes with an image/* or application/octet-stream content type",
        )
    body = await read_body(request, settings.max_body_bytes)
    if not body:
        raise APIError(400, "empty_body", "the request body is empty; send an image")
    if not multipart:
        return [(None, body)]
    parser = MultiPartParser(request.headers, _once(body), max_files=settings.max_files, max_fields=100,
                             max_part_size=64 * 1024)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if "Too many files" in exc.message:
            raise APIError(413, "too_many_files",
                           f"more than {settings.max_files} files in one request; send at most "
                           f"{settings.max_files}") from None
        raise APIError(400, "bad_multipart", f"the multipart body cannot be parsed: {exc.message}") from None
    files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
    try:
        if not files:
            raise APIError(400, "no_files", "the multipart body holds no file parts; send images as 'files'")
        return [(f.filename, await f.read()) for f in files]
    finally:
        await form.close()


# ---------------------------------------------------------------- the app


class _RequestMetrics:
    """ASGI middleware: count and time every request by its route and status."""

    def __init__(self, app, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = {"code": 500}

        async def capture(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "other"
            self.metrics.requests.labels(endpoint, scope.get("method", ""), str(status["code"])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


def static_dir() -> Path:
    return Path(str(resources.files("sparkvision.deploy").joinpath("static")))


def create_app(model_dir: str | Path, settings: ServeSettings | None = None) -> FastAPI:
    """The service for one model directory; the model loads (and warms up) at startup."""
    settings = settings or ServeSettings()
    metrics = ServeMetrics()
    state: dict[str, Any] = {"ready": False}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        model = load_runner(model_dir, settings)
        infer = inference(model)
        batcher = MicroBatcher(infer, metrics, enabled=settings.batching, max_batch=settings.max_batch,
                               window_ms=settings.batch_window_ms)
        decoder = ThreadPoolExecutor(max(1, settings.decode_workers), thread_name_prefix="sv-decode")
        await batcher.start()
        state.update(model=model, batcher=batcher, decoder=decoder)
        warm = np.zeros((1, *model.input_shape), dtype=np.float32)
        await asyncio.get_running_loop().run_in_executor(None, infer, warm)
        state["ready"] = True
        log.info("serving %s (%s, %d classes, version %s), batching %s", model.name,
                 "detector" if is_detector(model) else "classifier", len(model.labels or ()), model.version,
                 f"on (max {settings.max_batch}, window {settings.batch_window_ms} ms)"
                 if settings.batching else "off")
        try:
            yield
        finally:
            state["ready"] = False
            await batcher.stop()
            decoder.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="sparkvision", version=__version__, lifespan=lifespan,
        description="Image classification or object detection with a sparkvision model directory.",
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.model_state = state

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        metrics.rejected.labels(exc.code).inc()
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s: %s", request.url.path, exc, exc_info=exc)
        return JSONResponse({"error": {"code": "internal", "message": "internal server error"}}, status_code=500)

    def _model() -> ClassifierRunner | DetectorRunner:
        if not state["ready"]:
            raise APIError(503, "not_ready", "the model is still loading")
        return state["model"]

    async def _decode(model: ClassifierRunner | DetectorRunner,
                      images: list[tuple[str | None, bytes]]) -> tuple[np.ndarray, np.ndarray]:
        """The images as one tensor, and each one's displayed (width, height)."""
        loop = asyncio.get_running_loop()
        preprocessor = model.preprocessor

        def one(data: bytes) -> tuple[np.ndarray, tuple[int, int]] | ImageError:
            try:
                pixels, size = preprocessor.load_sized(data)
                return preprocessor.normalize(pixels[None]), size
            except ImageError as exc:
                return exc

        results = await asyncio.gather(*[loop.run_in_executor(state["decoder"], one, d) for _, d in images])
        bad = [(i, r) for i, r in enumerate(results) if isinstance(r, ImageError)]
        if bad:
            status, code = IMAGE_ERRORS.get(bad[0][1].kind, (422, "bad_image"))
            files = [{"index": i, "filename": images[i][0], "code": IMAGE_ERRORS.get(e.kind, (422, "bad_image"))[1],
                      "message": e.message} for i, e in bad]
            what = "the image" if len(images) == 1 else f"{len(bad)} of {len(images)} images"
            raise APIError(status, code, f"{what} cannot be used: {bad[0][1].message}", files)
        tensors, sizes = zip(*results, strict=True)  # type: ignore[arg-type]
        return np.concatenate(tensors), np.asarray(sizes, dtype=np.int64)

    @app.post("/v1/predict", response_model=PredictResponse | DetectResponse)
    async def predict(
        request: Request,
        top_k: int = Query(settings.top_k, ge=1, le=1000, description="classifier: classes returned per image"),
        score_threshold: float | None = Query(
            None, ge=0.0, le=1.0, description=f"detector: keep boxes scoring at least this "
            f"(default {settings.score_threshold})"),
        iou_threshold: float | None = Query(
            None, gt=0.0, le=1.0, description=f"detector: per-class NMS overlap (default {settings.iou_threshold})"),
        max_boxes: int | None = Query(
            None, ge=1, le=10_000, description=f"detector: most boxes per image (default {settings.max_boxes})"),
    ) -> PredictResponse | DetectResponse:
        model = _model()
        images = await read_images(request, settings)
        tensor, sizes = await _decode(model, images)
        outputs = await state["batcher"].submit(tensor)
        metrics.images.inc(len(images))
        if is_detector(model):
            boxes, scores = outputs
            chosen = settings.detection(score_threshold=score_threshold, iou_threshold=iou_threshold,
                                        max_boxes=max_boxes)
            # NMS off the event loop, beside image decoding.
            found = await asyncio.get_running_loop().run_in_executor(
                state["decoder"], model.decode_outputs, boxes, scores, sizes, chosen)
            labels = model.labels or [str(i) for i in range(scores.shape[-1])]
            predictions = [ImageDetections(filename=name, width=int(w), height=int(h),
                                           boxes=[Box(**r) for r in detections.records(labels)])
                           for (name, _), (w, h), detections in zip(images, sizes, found, strict=True)]
            return DetectResponse(model=model.name, version=model.version, score_threshold=chosen.score_threshold,
                                  iou_threshold=chosen.iou_threshold, max_boxes=chosen.max_boxes,
                                  predictions=predictions)
        tops = model.top_k_of(outputs, top_k)
        return PredictResponse(model=model.name, version=model.version, predictions=[
            ImagePrediction(filename=name, prediction=top[0]["label"],
                            top_k=[LabelProbability(**t) for t in top])
            for (name, _), top in zip(images, tops, strict=True)
        ])

    @app.get("/v1/models", response_model=ModelsResponse)
    async def models() -> ModelsResponse:
        return ModelsResponse(models=[model_info(_model())])

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if not state["ready"]:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ready", "model": state["model"].name})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(static_dir() / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=static_dir()), name="static")
    app.add_middleware(_RequestMetrics, metrics=metrics)
    return app


def run_server(model_dir: str | Path, settings: ServeSettings | None = None) -> None:
    """Serve until interrupted (what ``sparkvision serve`` runs).

    A model saved by an older ``sparkvision fit`` without ``model.onnx`` is exported first (once).
    """
    import uvicorn

    from sparkvision.deploy.export import ensure_onnx

    settings = settings or ServeSettings()
    ensure_onnx(model_dir)  # fail here, with one clear line, rather than inside uvicorn's startup
    app = create_app(model_dir, settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                limit_concurrency=None, timeout_graceful_shutdown=5)
