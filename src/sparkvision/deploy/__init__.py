"""Deployment: int8 quantisation and pruning measured against the original, pipeline export
to one ONNX graph, and the HTTP service with its web page (:mod:`.serve`)."""
