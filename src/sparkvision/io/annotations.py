"""Box annotations (Pascal VOC XML, COCO instances JSON) parsed and checked without Spark.

Coordinates are continuous pixel coordinates of the image **as displayed** (after its
EXIF orientation, like ``width``/``height`` in :mod:`sparkvision.io.schema`): ``(0, 0)``
is the top-left corner of the top-left pixel and ``(width, height)`` the bottom-right
corner of the last one, so a box covering the whole image is ``(0, 0, width, height)``.

* **VOC** pixel indices are 1-based and inclusive (the VOC devkit's convention), so
  ``xmin``/``ymin`` move by -1 and ``xmax``/``ymax`` stay: ``<xmin>1</xmin>
  <xmax>640</xmax>`` spans the full 640 px. This is Detectron2's reading, and the one the
  common VOC-to-COCO converters use (``x = xmin - 1``, ``w = xmax - xmin + 1``), so a set
  converted that way ingests to the same boxes through either format.
* **COCO** ``bbox`` is ``[x, y, w, h]`` in those continuous coordinates already.
  ``iscrowd`` annotations become ``difficult`` objects (both are ignored when scoring).

Annotation tools draw on the picture a person sees, so boxes are taken as displayed
pixels and never rotated. An annotation whose stated image size differs from the
displayed size (an EXIF-rotated photo annotated as stored, or a resized image) is a
``bad_annotation`` error rather than boxes silently in the wrong place.

Checks, each a row error of its own kind (see :class:`ErrorKind`): an unparsable file
or a field that is missing or not a number (``bad_annotation``); a box with
``xmax <= xmin`` or ``ymax <= ymin`` as written (``empty_box``); a box reaching
further outside the image than :data:`BOX_TOLERANCE_PX` /
:data:`BOX_TOLERANCE_FRACTION` of the side, or lying wholly outside it
(``box_outside``); a class outside the allowed list (``unknown_class``). A box only
slightly outside is clipped to the image and counted.
"""

from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace

from sparkvision.io.errors import ErrorKind, ImageError

#: A box coordinate may lie outside the image by this many pixels, or by this fraction
#: of the image side if that is more, and is then clipped (and counted) instead of
#: making the row an error: annotators' rounding and 0-based VOC files land here.
BOX_TOLERANCE_PX = 2.0
BOX_TOLERANCE_FRACTION = 0.02

#: The fields of one object, in the order of the Spark struct (``OBJECTS_TYPE``).
OBJECT_FIELDS = ("label", "xmin", "ymin", "xmax", "ymax", "difficult")

#: Annotation files larger than this are refused (no real per-image XML comes close).
MAX_ANNOTATION_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Box:
    """One labelled object, in continuous displayed-pixel coordinates."""

    label: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    difficult: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Annotation:
    """One image's objects, and the image size the annotation states (``None`` when it does not)."""

    objects: list[Box]
    width: int | None = None
    height: int | None = None
    filename: str | None = None


# ---------------------------------------------------------------------------- VOC


def _bad(detail: str) -> ImageError:
    return ImageError(ErrorKind.BAD_ANNOTATION, detail)


def _number(text: str | None, what: str) -> float:
    if text is None or not text.strip():
        raise _bad(f"{what} is missing")
    try:
        value = float(text.strip())
    except ValueError:
        raise _bad(f"{what} is not a number ({text.strip()[:40]!r})") from None
    if not math.isfinite(value):
        raise _bad(f"{what} is not finite ({text.strip()!r})")
    return value


def _flag(text: str | None, what: str) -> bool:
    if text is None or not text.strip():
        return False
    word = text.strip().lower()
    if word in ("true", "yes"):
        return True
    if word in ("false", "no"):
        return False
    return _number(word, what) != 0


def _size(value: float | None) -> int | None:
    """A stated image size; 0 or absent means the annotation does not say."""
    return int(value) if value is not None and value > 0 else None


def parse_voc(data: bytes) -> Annotation:
    """One Pascal VOC ``<annotation>`` file; raises :class:`ImageError` (``bad_annotation``) if unusable.

    Boxes are checked for emptiness here (on the values as written); their fit inside
    the image is :func:`fit_boxes`'s job, once the displayed size is known.
    """
    if len(data) > MAX_ANNOTATION_BYTES:
        raise _bad(f"{len(data):,} bytes is too large for an annotation file")
    if b"<!ENTITY" in data:  # entity expansion ('billion laughs') has no place in an annotation
        raise _bad("XML entity declarations are not allowed")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise _bad(f"XML cannot be parsed ({exc})") from None
    if root.tag != "annotation":
        raise _bad(f"the root element is <{root.tag}>, not <annotation>")
    size = root.find("size")
    width = height = None
    if size is not None:
        w, h = size.findtext("width"), size.findtext("height")
        width = _size(_number(w, "<size><width>")) if w is not None else None
        height = _size(_number(h, "<size><height>")) if h is not None else None
    objects = []
    for i, node in enumerate(root.iter("object"), start=1):
        name = (node.findtext("name") or "").strip()
        if not name:
            raise _bad(f"object {i} has no <name>")
        box = node.find("bndbox")
        if box is None:
            raise _bad(f"object {i} ({name}) has no <bndbox>")
        x0, y0, x1, y1 = (_number(box.findtext(k), f"object {i} ({name}) <{k}>") for k in ("xmin", "ymin", "xmax", "ymax"))
        if x1 <= x0 or y1 <= y0:
            raise ImageError(ErrorKind.EMPTY_BOX, f"object {i} ({name}) is empty: xmin {x0:g} xmax {x1:g}, ymin {y0:g} ymax {y1:g}")
        difficult = _flag(node.findtext("difficult"), f"object {i} ({name}) <difficult>")
        objects.append(Box(name, x0 - 1.0, y0 - 1.0, x1, y1, difficult))
    filename = (root.findtext("filename") or "").strip() or None
    return Annotation(objects, width, height, filename)


# --------------------------------------------------------------------------- COCO


@dataclass
class CocoImage:
    """One entry of a COCO ``images`` list with its objects, or the error that voids them."""

    id: int | str
    file_name: str
    annotation: Annotation
    error: str | None = None


@dataclass
class CocoSet:
    """A COCO instances file, grouped per image.

    ``orphans`` counts annotations per ``image_id`` that ``images`` does not list: they
    belong to no image, so each such id becomes a row of its own (``missing_id``).
    """

    categories: dict[int | str, str]
    images: list[CocoImage]
    orphans: dict[int | str, int] = field(default_factory=dict)


def looks_like_coco(doc: object) -> bool:
    return isinstance(doc, dict) and all(isinstance(doc.get(k), list) for k in ("images", "annotations", "categories"))


def _key(value: object) -> int | str:
    """COCO ids are integers; tolerate strings, and make ``1`` and ``1.0`` the same id."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value if isinstance(value, (int, str)) else repr(value)


def _coco_box(ann: dict, label: str) -> Box:
    bbox = ann.get("bbox")
    aid = ann.get("id", "?")
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise _bad(f"annotation {aid} ({label}): bbox must be [x, y, width, height], got {str(bbox)[:60]}")
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise _bad(f"annotation {aid} ({label}): bbox {bbox} is not four numbers") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise _bad(f"annotation {aid} ({label}): bbox {bbox} is not finite")
    if w <= 0 or h <= 0:
        raise ImageError(ErrorKind.EMPTY_BOX, f"annotation {aid} ({label}) is empty: width {w:g}, height {h:g}")
    return Box(label, x, y, x + w, y + h, bool(ann.get("iscrowd", 0)))


def parse_coco(data: bytes | str | dict) -> CocoSet:
    """A COCO instances document, one :class:`CocoImage` per ``images`` entry.

    Raises ``ValueError`` when the document is not COCO at all (no rows could be
    attributed); problems with single images or annotations become those images' errors.
    """
    doc = data if isinstance(data, dict) else json.loads(data)
    if not looks_like_coco(doc):
        keys = sorted(doc)[:8] if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"not a COCO instances file: expected lists 'images', 'annotations' and 'categories' "
                         f"at the top level, found {keys}")
    categories: dict[int | str, str] = {}
    for cat in doc["categories"]:
        if not isinstance(cat, dict) or "id" not in cat or not str(cat.get("name", "")).strip():
            raise ValueError(f"COCO category without an id or a name: {str(cat)[:80]}")
        categories[_key(cat["id"])] = str(cat["name"]).strip()
    images: list[CocoImage] = []
    by_id: dict[int | str, CocoImage] = {}
    for entry in doc["images"]:
        if not isinstance(entry, dict) or "id" not in entry or not str(entry.get("file_name", "")).strip():
            raise ValueError(f"COCO image without an id or a file_name: {str(entry)[:80]}")
        key = _key(entry["id"])
        width, height = entry.get("width"), entry.get("height")
        image = CocoImage(
            key, str(entry["file_name"]),
            Annotation([], _size(width) if isinstance(width, (int, float)) else None,
                       _size(height) if isinstance(height, (int, float)) else None, str(entry["file_name"])),
        )
        if key in by_id:
            image.error = _bad(f"image id {key} is listed twice in 'images'").message
        else:
            by_id[key] = image
        images.append(image)
    orphans: dict[int | str, int] = {}
    for ann in doc["annotations"]:
        if not isinstance(ann, dict):
            raise ValueError(f"COCO annotation is not an object: {str(ann)[:80]}")
        key = _key(ann.get("image_id"))
        image = by_id.get(key)
        if image is None:
            orphans[key] = orphans.get(key, 0) + 1
            continue
        if image.error is not None:
            continue
        cat = _key(ann.get("category_id"))
        if cat not in categories:
            image.error = ImageError(
                ErrorKind.MISSING_ID,
                f"annotation {ann.get('id', '?')} refers to category id {cat}, which 'categories' does not list",
            ).message
            continue
        try:
            image.annotation.objects.append(_coco_box(ann, categories[cat]))
        except ImageError as exc:
            image.error = exc.message
    return CocoSet(categories, images, orphans)


def coco_image_candidates(json_path: str, file_name: str) -> list[str]:
    """Where a COCO image may be, relative to its JSON: beside it, in ``images/``, or one folder up.

    For ``annotations/instances_val2017.json`` the official layout's ``../val2017/`` is
    tried too.
    """
    here = os.path.dirname(os.path.abspath(json_path))
    up = os.path.dirname(here)
    stem = os.path.splitext(os.path.basename(json_path))[0]
    folders = [here, os.path.join(here, "images"), up, os.path.join(up, "images")]
    if stem.startswith("instances_") and len(stem) > len("instances_"):
        folders.append(os.path.join(up, stem[len("instances_"):]))
    out: list[str] = []
    for folder in folders:
        path = os.path.normpath(os.path.join(folder, file_name))
        if path not in out:
            out.append(path)
    return out


# ------------------------------------------------------------------------ checks


def _tolerance(side: int) -> float:
    return max(BOX_TOLERANCE_PX, BOX_TOLERANCE_FRACTION * side)


def check_size(annotation: Annotation, width: int, height: int) -> None:
    """The annotation's stated size must be the displayed one, else its boxes are in another frame."""
    if annotation.width is None or annotation.height is None:
        return
    if (annotation.width, annotation.height) == (width, height):
        return
    if (annotation.width, annotation.height) == (height, width):
        raise _bad(
            f"the annotation is for a {annotation.width}x{annotation.height} image, but the image displays as "
            f"{width}x{height} (EXIF orientation): boxes must be drawn on the displayed image"
        )
    raise _bad(f"the annotation is for a {annotation.width}x{annotation.height} image, but the image is {width}x{height}")


def fit_boxes(
    objects: Sequence[Box],
    width: int | None,
    height: int | None,
    classes: Iterable[str] | None = None,
) -> tuple[list[Box], int]:
    """Check each box against the classes and the displayed image; return (boxes, how many were clipped).

    Without a size (probe ``none``) the boxes are returned as they are.
    """
    allowed = None if classes is None else set(classes)
    fitted: list[Box] = []
    clipped = 0
    for i, box in enumerate(objects, start=1):
        name = f"object {i} ({box.label})"
        if allowed is not None and box.label not in allowed:
            raise ImageError(ErrorKind.UNKNOWN_CLASS, f"{name}: class {box.label!r} is not one of {sorted(allowed)}")
        if box.xmax <= box.xmin or box.ymax <= box.ymin:
            raise ImageError(ErrorKind.EMPTY_BOX, f"{name} is empty: ({box.xmin:g}, {box.ymin:g}, {box.xmax:g}, {box.ymax:g})")
        if width is None or height is None:
            fitted.append(box)
            continue
        coords = f"({box.xmin:g}, {box.ymin:g}, {box.xmax:g}, {box.ymax:g})"
        beyond_x = max(-box.xmin, box.xmax - width, 0.0)
        beyond_y = max(-box.ymin, box.ymax - height, 0.0)
        if beyond_x > _tolerance(width) or beyond_y > _tolerance(height):
            raise ImageError(
                ErrorKind.BOX_OUTSIDE,
                f"{name} {coords} reaches {max(beyond_x, beyond_y):g} px outside the {width}x{height} image",
            )
        inside = replace(
            box,
            xmin=min(max(box.xmin, 0.0), float(width)), xmax=min(max(box.xmax, 0.0), float(width)),
            ymin=min(max(box.ymin, 0.0), float(height)), ymax=min(max(box.ymax, 0.0), float(height)),
        )
        if inside.xmax <= inside.xmin or inside.ymax <= inside.ymin:
            raise ImageError(ErrorKind.BOX_OUTSIDE, f"{name} {coords} lies outside the {width}x{height} image")
        if inside != box:
            clipped += 1
        fitted.append(inside)
    return fitted, clipped
