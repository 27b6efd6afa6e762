"""HTTP serving of a model directory: FastAPI app, micro-batching, Prometheus metrics, a web page."""

from sparkvision.deploy.serve.app import create_app, run_server
from sparkvision.deploy.serve.batching import MicroBatcher
from sparkvision.deploy.serve.model import ServedModel

__all__ = ["MicroBatcher", "ServedModel", "create_app", "run_server"]
