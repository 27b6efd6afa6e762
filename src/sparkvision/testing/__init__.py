"""Tools for sparkvision's own tests, benchmarks and scripts; nothing at runtime imports them.

* :mod:`.cluster` - a real Spark standalone cluster on loopback (``scripts/cluster.py``)
* :mod:`.proc` - process trees and their memory, read from ``/proc``
* :mod:`.profile` - peak memory of tiling, in one process and in Spark's Python workers
* :mod:`.server` - the real server for an app, on a free loopback port in a background thread
* :mod:`.synthetic_scenes` - large scenes with known objects, and a classifier that finds them
* :mod:`.synthetic_predictions` - predictions of any size generated inside Spark
"""
