"""The ONNX classifier runner, without Spark: real weights and photos, bad bytes, a failing batch."""

from __future__ import annotations

import io
import logging

import numpy as np
import onnx
import pytest
from deploy_helpers import imagenet_model_dir, photos
from onnx import TensorProto, helper
from PIL import Image
from scipy.special import softmax

from sparkvision.config import PreprocessConfig
from sparkvision.io.errors import error_kind
from sparkvision.models.model_dir import load_card, onnx_path
from sparkvision.models.runner import ClassifierRunner
from sparkvision.models.runtime import OnnxModel
from sparkvision.preprocess import ImagePreprocessor


def _png(rgb: tuple[int, int, int], size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def good() -> list[bytes]:
    return [path.read_bytes() for path, _ in photos("val", 1)[:3]]


def test_encoded_images_and_tensors_give_onnx_runtimes_probabilities_and_bad_bytes_their_own_errors(good):
    model_dir = imagenet_model_dir()
    runner = ClassifierRunner.from_model_dir(model_dir, threads=1, batch_size=2)
    assert runner.card is not None and runner.labels == load_card(model_dir).labels
    # With batch_size 2 the third batch holds only bad rows, and the last a single image.
    contents = [good[0], b"", b"no pixels here", good[1], good[2][:3000], None, good[2]]
    rows = runner.predict_proba(contents)
    assert rows.index.tolist() == [0, 3, 6]
    assert [error_kind(e) for e in rows.errors] == [
        None, "empty_file", "not_an_image", None, "truncated", "unreadable", None]

    # Reference: each photo alone through ONNX Runtime, softmax from scipy.
    card = load_card(model_dir)
    session = OnnxModel(onnx_path(model_dir), threads=1)
    tensor = ImagePreprocessor(card.preprocess)(good).tensor
    want = softmax(session.run(tensor, ["logits"])[0].astype(np.float64), axis=1)
    assert rows.values.shape == (3, 1000)
    np.testing.assert_allclose(rows.values, want, atol=1e-6)
    np.testing.assert_allclose(runner.predict_proba(tensor), want, atol=1e-6)
    spread = rows.per_input()
    assert [p is None for p in spread] == [e is not None for e in rows.errors]

    tops = runner.top_k(contents, 5)
    assert tops.index.tolist() == [0, 3, 6] and tops.errors == rows.errors
    for got, probs in zip(tops.values, want, strict=True):
        order = np.argsort(-probs)[:5]
        assert [t["label"] for t in got] == [card.labels[i] for i in order]
        np.testing.assert_allclose([t["probability"] for t in got], probs[order], atol=1e-6)
    assert runner.top_k(tensor, 5) == tops.values
    assert runner.top1_of(want) == [card.labels[i] for i in want.argmax(axis=1)]

    features = runner.features(tensor)
    assert features.shape == (3, 1280)
    np.testing.assert_allclose(features, session.run(tensor, ["features"])[0], atol=1e-5)
    np.testing.assert_allclose(runner.features(contents).values, features, atol=1e-5)


def test_the_next_batch_decodes_on_a_thread_while_the_model_runs_and_rows_stay_in_order(good):
    import threading

    class Recording(ClassifierRunner):
        def preprocess(self, images):
            self.threads_seen.append(threading.current_thread().name)
            return super().preprocess(images)

    contents = [good[0], b"", good[1], None, good[2], good[0][:2000], good[1]]
    results = {}
    for overlap in (False, True):
        runner = Recording.from_model_dir(imagenet_model_dir(), threads=1, batch_size=2, overlap=overlap)
        runner.threads_seen = []
        results[overlap] = runner.predict_proba(contents)
        decoded_on = set(runner.threads_seen)
        assert len(runner.threads_seen) == 4  # 7 rows in slices of 2
        assert decoded_on == ({threading.current_thread().name} if not overlap else {"sparkvision-decode_0"})
    off, on = results[False], results[True]
    assert on.index.tolist() == off.index.tolist() == [0, 2, 4, 6]
    assert on.errors == off.errors and [error_kind(e) for e in on.errors][:4] == [None, "empty_file", None,
                                                                                   "unreadable"]
    np.testing.assert_array_equal(on.values, off.values)


def test_a_batch_of_only_bad_rows_never_loads_the_model():
    runner = ClassifierRunner.from_model_dir(imagenet_model_dir(), threads=1)
    rows = runner.predict_proba([b"", b"not an image"])
    assert rows.values.shape == (0, 1000) and len(rows.index) == 0
    assert [error_kind(e) for e in rows.errors] == ["empty_file", "not_an_image"]
    assert runner._session is None


def _channel_log_mean_graph(output: str = "logits") -> bytes:
    """input (1, 3, 8, 8), batch fixed at 1 -> log of each channel's mean: NaN where a mean is negative.

    softmax(log m) = m / sum(m), so the expected probabilities are the channel means, normalised.
    """
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 3])
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["mean"], axes=[2, 3], keepdims=1),
        helper.make_node("Reshape", ["mean", "shape"], ["flat"]),
        helper.make_node("Log", ["flat"], [output]),
    ]
    graph = helper.make_graph(
        nodes, "channel_log_mean", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, [1, 3])], initializer=[shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


TINY = PreprocessConfig(size=(8, 8), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def test_a_failing_batch_is_retried_row_by_row_and_non_finite_rows_get_model_errors(caplog):
    runner = ClassifierRunner(_channel_log_mean_graph(), TINY, labels=["r", "g", "b"], threads=1, batch_size=8)
    colours = [(200, 200, 200), (20, 20, 20), (220, 180, 150)]
    with caplog.at_level(logging.WARNING, logger="sparkvision.models.runner"):
        rows = runner.predict_proba([_png(c) for c in colours])
    assert "retrying row by row" in caplog.text  # the graph takes one image per call: the batch of 3 failed
    assert rows.index.tolist() == [0, 2]
    assert rows.errors[1] == "model: the model produced non-finite outputs"
    means = (np.asarray([colours[0], colours[2]], dtype=np.float64) / 255 - 0.5) / 0.5
    np.testing.assert_allclose(rows.values, means / means.sum(axis=1, keepdims=True), atol=1e-5)


def test_a_model_whose_scores_do_not_match_its_labels_gives_model_errors_and_needs_logits():
    runner = ClassifierRunner(_channel_log_mean_graph(), TINY, labels=["a", "b"], threads=1, batch_size=1)
    rows = runner.predict_proba([_png((200, 200, 200)), b""])
    assert len(rows.index) == 0
    assert rows.errors[0] == "model: the model gives scores of shape (3,) but has 2 labels"
    assert error_kind(rows.errors[1]) == "empty_file"
    with pytest.raises(ValueError, match="has no 'logits' output"):
        ClassifierRunner(_channel_log_mean_graph("scores"), TINY, outputs={"scores": "scores"}, labels=["a"])


def test_flip_tta_averages_each_output_over_the_photo_and_its_pillow_mirror(good):
    """The reference is the plain runner on the photo and on Pillow's left-right mirror of it (lossless PNG)."""
    model_dir = imagenet_model_dir()
    plain = ClassifierRunner.from_model_dir(model_dir, threads=1, batch_size=2)
    flipped = ClassifierRunner.from_model_dir(model_dir, threads=1, batch_size=2, tta="flip")

    def png(image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        return buffer.getvalue()

    photos_png = [png(Image.open(io.BytesIO(b)).convert("RGB")) for b in good]
    mirrors = [png(Image.open(io.BytesIO(b)).transpose(Image.Transpose.FLIP_LEFT_RIGHT)) for b in photos_png]
    both = [plain.features(photos_png).values, plain.features(mirrors).values]
    got = flipped.features([*photos_png, b"broken"])
    assert got.index.tolist() == [0, 1, 2] and error_kind(got.errors[3]) == "not_an_image"
    np.testing.assert_allclose(got.values, (both[0] + both[1]) / 2, atol=2e-3)
    assert np.abs(both[0] - both[1]).max() > 0.05  # the mirror really is another input
    logits = [plain.vectors(photos_png, "logits").values, plain.vectors(mirrors, "logits").values]
    want = softmax(((logits[0] + logits[1]) / 2).astype(np.float64), axis=1)
    np.testing.assert_allclose(flipped.predict_proba(photos_png).values, want, atol=1e-3)
    with pytest.raises(ValueError, match="tta must be one of"):
        ClassifierRunner.from_model_dir(model_dir, tta="rotate")
