"""The one DataFrame schema every image source produces.

=========  =======  ==============================================================
column     type     meaning
=========  =======  ==============================================================
path       string   where the image came from: a Hadoop-style URI (``file:/...``,
                    ``hdfs://...``) or ``<dataset>/<split>/<index>`` for built-ins
label      string   class name (the first sub-folder under the root), null if none
content    binary   the encoded file bytes as stored (never decoded pixels); null
                    when the file could not be read
format     string   Pillow's format name (JPEG, PNG, ...), null when unknown
mode       string   Pillow's mode as stored (RGB, L, P, CMYK, I;16, ...)
width      int      width as displayed, after EXIF orientation
height     int      height as displayed, after EXIF orientation
channels   int      colour channels (palette images count as 3, or 4 with alpha)
error      string   null when the row is usable, else ``"<kind>: <detail>"``
=========  =======  ==============================================================

Every input file is exactly one row; rows with an error keep their path and label
so nothing disappears between a source and any output.

Detection sources (Pascal VOC, COCO; :mod:`sparkvision.io.detection`) give
:data:`DETECTION_SCHEMA`: the columns above (``label`` null) and two more.

=============  ============================  =========================================
column         type                          meaning
=============  ============================  =========================================
objects        array<struct<label string,    the image's boxes in continuous pixel
               xmin double, ymin double,     coordinates of the image as displayed
               xmax double, ymax double,     (see :mod:`sparkvision.io.annotations`);
               difficult boolean>>           null when the row has an error
clipped_boxes  int                           boxes clipped into the image on this row
=============  ============================  =========================================
"""

from __future__ import annotations

from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    BooleanType,
    DoubleType,
    IntegerType,
    StringType,
    StructField,
    StructType,
)

PATH, LABEL, CONTENT, FORMAT, MODE, WIDTH, HEIGHT, CHANNELS, ERROR = (
    "path", "label", "content", "format", "mode", "width", "height", "channels", "error",
)

IMAGE_SCHEMA = StructType(
    [
        StructField(PATH, StringType(), False),
        StructField(LABEL, StringType(), True),
        StructField(CONTENT, BinaryType(), True),
        StructField(FORMAT, StringType(), True),
        StructField(MODE, StringType(), True),
        StructField(WIDTH, IntegerType(), True),
        StructField(HEIGHT, IntegerType(), True),
        StructField(CHANNELS, IntegerType(), True),
        StructField(ERROR, StringType(), True),
    ]
)

IMAGE_COLUMNS = [f.name for f in IMAGE_SCHEMA.fields]
#: The columns without the bytes: what statistics and listings read.
METADATA_COLUMNS = [c for c in IMAGE_COLUMNS if c != CONTENT]

OBJECTS, CLIPPED_BOXES = "objects", "clipped_boxes"

#: One labelled box (fields in the order of ``sparkvision.io.annotations.OBJECT_FIELDS``).
BOX_TYPE = StructType(
    [
        StructField("label", StringType(), True),
        StructField("xmin", DoubleType(), True),
        StructField("ymin", DoubleType(), True),
        StructField("xmax", DoubleType(), True),
        StructField("ymax", DoubleType(), True),
        StructField("difficult", BooleanType(), True),
    ]
)
OBJECTS_TYPE = ArrayType(BOX_TYPE, True)

DETECTION_SCHEMA = StructType(
    list(IMAGE_SCHEMA.fields)
    + [StructField(OBJECTS, OBJECTS_TYPE, True), StructField(CLIPPED_BOXES, IntegerType(), True)]
)
DETECTION_COLUMNS = [f.name for f in DETECTION_SCHEMA.fields]
