"""sparkvision: image recognition at scale on Apache Spark.

The package follows the way data flows:

* :mod:`sparkvision.io` - sources into one DataFrame schema, Parquet datasets, splits
  (decode rules and error kinds import without Spark)
* :mod:`sparkvision.preprocess` - decode, mode rules, resize, normalise (one path for all)
* :mod:`sparkvision.models` - the model registry, ONNX export and runtime, model directories
* :mod:`sparkvision.ml` - Spark ML stages: featurizer, predictor, classifier pipelines
* :mod:`sparkvision.training` - data-parallel CNN training through TorchDistributor
* :mod:`sparkvision.inference` - batch prediction jobs
* :mod:`sparkvision.evaluation` - distributed metrics and reports
* :mod:`sparkvision.tiling` - very large images as overlapping tiles, heat maps back
* :mod:`sparkvision.deploy` - quantisation, pruning, the HTTP service
* :mod:`sparkvision.cli` - the ``sparkvision`` command
* :mod:`sparkvision.storage` - paths and URIs, reads, atomic writes (one place for all)
* :mod:`sparkvision.testing` - tools for the tests and benchmarks only
"""

__version__ = "0.1.0"
