"""The kinds of per-row failure sparkvision reports instead of failing a job.

An ``error`` cell is always ``"<kind>: <detail>"``, so counting rows per kind is a
``split(error, ':')[0]`` away and a person still reads a full sentence.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorKind(StrEnum):
    EMPTY_FILE = "empty_file"  # zero bytes
    UNREADABLE = "unreadable"  # the file could not be opened or read (permissions, vanished, bad name)
    TOO_LARGE = "too_large"  # more bytes than the ingest limit
    NOT_AN_IMAGE = "not_an_image"  # no image format recognises the bytes
    TRUNCATED = "truncated"  # the data ends before the image does
    CORRUPT = "corrupt"  # a recognised format whose data is broken
    TOO_MANY_PIXELS = "too_many_pixels"  # above the decompression-bomb limit
    UNSUPPORTED = "unsupported"  # a valid image sparkvision cannot convert (exotic mode)
    MODEL = "model"  # the model failed on this row (e.g. a non-finite output)
    # Box annotations (detection sources, see sparkvision.io.annotations):
    MISSING_IMAGE = "missing_image"  # an annotation whose image file does not exist
    MISSING_ANNOTATION = "missing_annotation"  # an image without its annotation file
    MISSING_ID = "missing_id"  # a COCO annotation naming an image id or category id that is not listed
    BAD_ANNOTATION = "bad_annotation"  # unparsable, a field missing or not a number, or sized for another image
    EMPTY_BOX = "empty_box"  # a box with xmax <= xmin or ymax <= ymin
    BOX_OUTSIDE = "box_outside"  # a box beyond the clipping tolerance outside the image, or wholly outside
    UNKNOWN_CLASS = "unknown_class"  # an object whose class is not in the allowed list (--classes)


#: Kinds about a row's annotation rather than its image: such a row's image may be fine
#: (its bytes and metadata are kept), so it can still be predicted on, though not trained on.
ANNOTATION_KINDS = frozenset({
    ErrorKind.MISSING_ANNOTATION, ErrorKind.MISSING_ID, ErrorKind.BAD_ANNOTATION,
    ErrorKind.EMPTY_BOX, ErrorKind.BOX_OUTSIDE, ErrorKind.UNKNOWN_CLASS,
})


class ImageError(Exception):
    """A failure tied to one input row; its text goes into that row's ``error`` column."""

    def __init__(self, kind: ErrorKind, detail: str) -> None:
        super().__init__(f"{kind.value}: {detail}")
        self.kind = kind
        self.detail = detail

    @property
    def message(self) -> str:
        return str(self)


def error_kind(message: str | None) -> str | None:
    """The kind part of an ``error`` cell (``None`` for rows without error)."""
    if message is None:
        return None
    return message.split(":", 1)[0]
