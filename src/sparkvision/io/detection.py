"""Box-labelled image sets into Spark rows of :data:`DETECTION_SCHEMA`, one row per image id.

Sources (local paths or ``file:`` URIs, visible to every executor like a folder source):

* **Pascal VOC**: a folder holding ``JPEGImages/`` and ``Annotations/`` (``<id>.xml``
  per image ``<id>.<ext>``), or an image-set list inside it,
  ``DIR/ImageSets/Main/<split>.txt`` (one id a line, first word), which selects those ids.
* **COCO**: an instances ``.json`` (lists ``images``, ``annotations``, ``categories``).
  Each ``file_name`` is looked up beside the JSON, in ``images/`` beside it, one folder
  up (and in ``../<split>/`` for ``instances_<split>.json``), or only in ``images`` when
  that folder is given (``--images DIR``). An image listed without annotations is an
  image with no objects, as in COCO itself.

Rows keep the image schema (``label`` null) and add ``objects`` and ``clipped_boxes``;
coordinates and checks are described in :mod:`sparkvision.io.annotations`. Every file
and id is accounted for: an annotation without its image is a ``missing_image`` row
(its path is the annotation's, content null), an image without an annotation a
``missing_annotation`` row, COCO annotations of an image id that ``images`` lacks one
``missing_id`` row per such id (path ``<json>#image_id=<id>``). A row whose annotation is
bad keeps its image's bytes and metadata; ``objects`` is null on every error row. Image
bytes are read and checked by the same code as the folder source, so bad images get
the usual error kinds.

With ``classes`` (``--classes``), an object of any other class makes its row an
``unknown_class`` error, and that order is the one a written dataset records.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import BinaryType, LongType, StringType, StructField, StructType

from sparkvision import storage
from sparkvision.config import DecodeSettings, IngestSettings
from sparkvision.io.annotations import (
    MAX_ANNOTATION_BYTES,
    Annotation,
    Box,
    check_size,
    coco_image_candidates,
    fit_boxes,
    parse_coco,
    parse_voc,
)
from sparkvision.io.errors import ErrorKind, ImageError
from sparkvision.io.schema import CLIPPED_BOXES, DETECTION_COLUMNS, DETECTION_SCHEMA, OBJECTS
from sparkvision.io.sources import ProbeLevel, _conf_bytes, _read_local, describe_rows, is_hidden
from sparkvision.session import default_parallelism

log = logging.getLogger(__name__)

ANNOTATIONS, IMAGES, IMAGE_SETS = "Annotations", "JPEGImages", "ImageSets"

#: What the driver hands the executors: one row per image id, the files to read, and
#: an error already known from the listing (``missing_image`` ...).
_TASK_SCHEMA = StructType(
    [
        StructField("path", StringType(), False),
        StructField("fs_path", BinaryType(), True),  # the image, when it exists
        StructField("size", LongType(), False),
        StructField("xml_path", BinaryType(), True),  # VOC: the annotation file to parse
        StructField("boxes", StringType(), True),  # COCO: the image's parsed objects, as JSON
        StructField("error", StringType(), True),
    ]
)


def local_path(src: str) -> str | None:
    """The local path of a plain path or ``file:`` URI; ``None`` for anything else."""
    try:
        return storage.local_path_or_none(src)
    except storage.NotLocalError:
        return None


def _uri(path: str) -> str:
    return storage.file_uri(path)


@dataclass(frozen=True)
class VocSource:
    root: str
    image_set: str | None = None  # the ImageSets list file, when the source is one


def is_voc_root(path: str) -> bool:
    return os.path.isdir(os.path.join(path, ANNOTATIONS)) and os.path.isdir(os.path.join(path, IMAGES))


def voc_source(src: str) -> VocSource | None:
    """The VOC set ``src`` names (its root, or an ``ImageSets/<kind>/<split>.txt`` list in it), if any."""
    path = local_path(src)
    if path is None:
        return None
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return VocSource(path) if is_voc_root(path) else None
    if path.lower().endswith(".txt") and os.path.isfile(path):
        root = os.path.dirname(os.path.dirname(os.path.dirname(path)))
        if os.path.basename(os.path.dirname(os.path.dirname(path))) == IMAGE_SETS and is_voc_root(root):
            return VocSource(root, path)
    return None


def is_coco_file(src: str) -> bool:
    """A local ``.json`` file: COCO is the only JSON source (its content is checked when read)."""
    path = local_path(src)
    return path is not None and path.lower().endswith(".json") and os.path.isfile(path)


def _ext_rank(name: str, extensions: tuple[str, ...]) -> tuple[int, str]:
    lower = name.lower()
    for i, ext in enumerate(extensions):
        if lower.endswith(ext):
            return (i, name)
    return (len(extensions), name)


def _list_files(folder: str, keep) -> list[str]:
    try:
        entries = sorted(e.name for e in os.scandir(folder) if not is_hidden(e.name) and keep(e))
    except OSError as exc:
        raise FileNotFoundError(f"cannot list {folder}: {exc.strerror}") from None
    return entries


def _read_image_set(path: str) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as handle:
        ids = [line.split()[0] for line in handle if line.strip()]
    return list(dict.fromkeys(ids))


def list_voc(source: VocSource, ingest: IngestSettings) -> pd.DataFrame:
    """The driver's listing of a VOC set: one task row per image id (and per extra image file)."""
    root = source.root
    images_dir, ann_dir = os.path.join(root, IMAGES), os.path.join(root, ANNOTATIONS)

    def is_image(e: os.DirEntry) -> bool:
        return e.name.lower().endswith(ingest.extensions) and not e.is_dir()

    images: dict[str, list[str]] = {}
    for name in _list_files(images_dir, is_image):
        images.setdefault(os.path.splitext(name)[0], []).append(name)
    xmls = {os.path.splitext(n)[0]: n for n in _list_files(ann_dir, lambda e: e.name.lower().endswith(".xml"))}
    if source.image_set is not None:
        ids = _read_image_set(source.image_set)
        listed = os.path.relpath(source.image_set, root)
    else:
        ids = sorted(set(images) | set(xmls))
        listed = None
    rows = []
    for image_id in ids:
        names = sorted(images.get(image_id, []), key=lambda n: _ext_rank(n, ingest.extensions))
        xml = xmls.get(image_id)
        xml_path = os.path.join(ann_dir, xml) if xml else None
        if not names:
            if xml_path is not None:
                detail = f"no image named {image_id}.* in {IMAGES}/ for {ANNOTATIONS}/{xml}"
                rows.append((_uri(xml_path), None, 0, None, None, ImageError(ErrorKind.MISSING_IMAGE, detail).message))
            else:
                detail = f"id {image_id!r} is listed in {listed} but has no image in {IMAGES}/ and no {ANNOTATIONS}/{image_id}.xml"
                rows.append((_uri(os.path.join(ann_dir, image_id + ".xml")), None, 0, None, None,
                             ImageError(ErrorKind.MISSING_IMAGE, detail).message))
            continue
        for i, name in enumerate(names):
            image_path = os.path.join(images_dir, name)
            try:
                size = os.stat(image_path).st_size
            except OSError:
                size = -1
            error = None
            if xml_path is None:
                error = ImageError(ErrorKind.MISSING_ANNOTATION, f"no {ANNOTATIONS}/{image_id}.xml for this image").message
            elif i > 0:
                error = ImageError(
                    ErrorKind.MISSING_ANNOTATION, f"{ANNOTATIONS}/{xml} belongs to {IMAGES}/{names[0]}, not to this image"
                ).message
            rows.append((_uri(image_path), os.fsencode(image_path), size,
                         os.fsencode(xml_path) if xml_path and error is None else None, None, error))
    return pd.DataFrame(rows, columns=[f.name for f in _TASK_SCHEMA.fields])


def _boxes_json(annotation: Annotation) -> str:
    return json.dumps({
        "width": annotation.width, "height": annotation.height,
        "objects": [[b.label, b.xmin, b.ymin, b.xmax, b.ymax, b.difficult] for b in annotation.objects],
    })


def _from_boxes_json(text: str) -> Annotation:
    doc = json.loads(text)
    return Annotation([Box(*o) for o in doc["objects"]], doc["width"], doc["height"])


def list_coco(json_path: str, images_dir: str | None) -> pd.DataFrame:
    """The driver's listing of a COCO file: one task row per listed image and per unknown image id."""
    with open(json_path, "rb") as handle:
        try:
            doc = json.load(handle)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{json_path} is not valid JSON ({exc})") from None
    try:
        coco = parse_coco(doc)
    except ValueError as exc:
        raise ValueError(f"{json_path}: {exc}") from None
    if images_dir is not None and not os.path.isdir(images_dir):
        raise FileNotFoundError(f"images folder {images_dir!r} does not exist")
    rows = []
    for image in coco.images:
        if images_dir is not None:
            candidates = [os.path.normpath(os.path.join(os.path.abspath(images_dir), image.file_name))]
        else:
            candidates = coco_image_candidates(json_path, image.file_name)
        found = next((c for c in candidates if os.path.isfile(c)), None)
        error = image.error
        if found is None:
            tried = ", ".join(candidates)
            error = ImageError(ErrorKind.MISSING_IMAGE, f"image id {image.id} ({image.file_name}) not found at {tried}").message
            rows.append((_uri(candidates[0]), None, 0, None, None, error))
            continue
        rows.append((_uri(found), os.fsencode(found), os.stat(found).st_size, None,
                     None if error else _boxes_json(image.annotation), error))
    for image_id, count in sorted(coco.orphans.items(), key=lambda kv: str(kv[0])):
        many = f"{count} annotations refer" if count > 1 else "1 annotation refers"
        detail = f"{many} to image id {image_id}, which 'images' does not list"
        rows.append((f"{_uri(json_path)}#image_id={image_id}", None, 0, None, None,
                     ImageError(ErrorKind.MISSING_ID, detail).message))
    log.info("COCO file %s: %d images, %d categories, %d unknown image ids", json_path, len(coco.images),
             len(coco.categories), len(coco.orphans))
    return pd.DataFrame(rows, columns=[f.name for f in _TASK_SCHEMA.fields])


def _read_annotation(xml_path: bytes) -> Annotation:
    try:
        with open(xml_path, "rb") as handle:
            data = handle.read(MAX_ANNOTATION_BYTES + 1)
    except OSError as exc:
        raise ImageError(ErrorKind.BAD_ANNOTATION, f"cannot read the annotation file ({exc.strerror})") from None
    return parse_voc(data)


def _describe_batches(
    batches: Iterator[pd.DataFrame],
    max_bytes: int,
    decode: DecodeSettings,
    probe: ProbeLevel,
    classes: tuple[str, ...] | None,
) -> Iterator[pd.DataFrame]:
    for batch in batches:
        contents: list[bytes | None] = []
        read_errors: list[str | None] = []
        for fs_path, size in zip(batch["fs_path"], batch["size"], strict=True):
            if fs_path is None:
                contents.append(None)
                read_errors.append("missing")  # replaced by the listing's error below
                continue
            try:
                contents.append(_read_local(fs_path, int(size), max_bytes))
                read_errors.append(None)
            except ImageError as exc:
                contents.append(None)
                read_errors.append(exc.message)
        n = len(batch)
        out = describe_rows(list(batch["path"]), [None] * n, contents, read_errors, decode, probe)
        errors = list(out["error"])
        objects: list[list[dict] | None] = [None] * n
        clipped: list[int | None] = [None] * n
        for i, (listed, xml_path, boxes) in enumerate(zip(batch["error"], batch["xml_path"], batch["boxes"], strict=True)):
            if listed is not None:
                errors[i] = listed
                continue
            if errors[i] is not None:
                continue
            width, height = out["width"].iat[i], out["height"].iat[i]
            width = None if pd.isna(width) else int(width)
            height = None if pd.isna(height) else int(height)
            try:
                annotation = _read_annotation(xml_path) if xml_path is not None else _from_boxes_json(boxes)
                if width is not None and height is not None:
                    check_size(annotation, width, height)
                fitted, clipped[i] = fit_boxes(annotation.objects, width, height, classes)
                objects[i] = [b.as_dict() for b in fitted]
            except ImageError as exc:
                errors[i] = exc.message
            except Exception as exc:  # noqa: BLE001 - one odd annotation must not fail the Spark task
                errors[i] = ImageError(ErrorKind.BAD_ANNOTATION, f"{type(exc).__name__}: {exc}").message
        out["error"] = errors
        out[OBJECTS] = objects
        out[CLIPPED_BOXES] = pd.array(clipped, dtype="Int32")
        yield out[DETECTION_COLUMNS]


def _read_tasks(
    spark: SparkSession,
    tasks: pd.DataFrame,
    ingest: IngestSettings,
    decode: DecodeSettings,
    probe: ProbeLevel,
    classes: Sequence[str] | None,
) -> DataFrame:
    max_partition = _conf_bytes(spark, "spark.sql.files.maxPartitionBytes", "128m")
    total = int(tasks["size"].clip(lower=0).sum()) if len(tasks) else 0
    parallelism = default_parallelism(spark)
    partitions = max(1, min(len(tasks), max(parallelism, math.ceil(total / max_partition))))
    frame = spark.createDataFrame(tasks, schema=_TASK_SCHEMA).repartition(partitions)
    reader = partial(_describe_batches, max_bytes=ingest.max_file_bytes, decode=decode, probe=probe,
                     classes=None if classes is None else tuple(classes))
    return frame.mapInPandas(reader, DETECTION_SCHEMA)


def _check_classes(classes: Sequence[str] | None) -> None:
    if classes is None:
        return
    if not classes or any(not c or c != c.strip() for c in classes) or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct non-empty names without surrounding spaces, got {list(classes)}")


def read_voc(
    spark: SparkSession,
    src: str,
    ingest: IngestSettings | None = None,
    decode: DecodeSettings | None = None,
    classes: Sequence[str] | None = None,
    probe: ProbeLevel = "full",
) -> DataFrame:
    """A VOC root or image-set list as DETECTION_SCHEMA rows."""
    _check_classes(classes)
    source = voc_source(src)
    if source is None:
        raise FileNotFoundError(
            f"{src!r} is not a Pascal VOC set: expected a local folder with {IMAGES}/ and {ANNOTATIONS}/, "
            f"or a list DIR/{IMAGE_SETS}/Main/<split>.txt inside one"
        )
    tasks = list_voc(source, ingest or IngestSettings())
    log.info("listed %d image ids in the VOC set %s%s", len(tasks), source.root,
             f" ({source.image_set})" if source.image_set else "")
    return _read_tasks(spark, tasks, ingest or IngestSettings(), decode or DecodeSettings(), probe, classes)


def read_coco(
    spark: SparkSession,
    src: str,
    images: str | None = None,
    ingest: IngestSettings | None = None,
    decode: DecodeSettings | None = None,
    classes: Sequence[str] | None = None,
    probe: ProbeLevel = "full",
) -> DataFrame:
    """A COCO instances JSON as DETECTION_SCHEMA rows; images beside it or under ``images``."""
    _check_classes(classes)
    path = local_path(src)
    if path is None or not os.path.isfile(path):
        raise FileNotFoundError(f"COCO annotations {src!r} not found (a local .json file is expected)")
    images_dir = None if images is None else local_path(images)
    if images is not None and images_dir is None:
        raise ValueError(f"--images must be a local folder, got {images!r}")
    tasks = list_coco(path, images_dir)
    return _read_tasks(spark, tasks, ingest or IngestSettings(), decode or DecodeSettings(), probe, classes)


def is_detection(frame: DataFrame) -> bool:
    return OBJECTS in frame.columns


def object_classes(frame: DataFrame) -> list[str]:
    """The classes of the usable rows' objects, sorted (what a dataset records without ``--classes``)."""
    labels = (
        frame.where(F.col("error").isNull())
        .select(F.explode(OBJECTS).alias("o"))
        .select(F.col("o.label").alias("label"))
        .distinct()
        .collect()
    )
    return sorted(r["label"] for r in labels)
