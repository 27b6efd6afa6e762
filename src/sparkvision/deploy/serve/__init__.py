"""HTTP serving of a model directory: FastAPI app, micro-batching, Prometheus metrics, a web page.

The model is a :class:`sparkvision.models.runner.ClassifierRunner`, or for a detector
model directory a :class:`sparkvision.detection.runner.DetectorRunner`, like everywhere else.
"""

from sparkvision.deploy.serve.app import create_app, run_server
from sparkvision.deploy.serve.batching import MicroBatcher

__all__ = ["MicroBatcher", "create_app", "run_server"]
