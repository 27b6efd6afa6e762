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
"""

from __future__ import annotations

from pyspark.sql.types import BinaryType, IntegerType, StringType, StructField, StructType

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
