"""Drift statistics without Spark: the profile's shape, PSI, the feature-shift statistic, the verdict.

A :class:`Snapshot` is what a set of predictions looked like, as counts and moments that
Spark aggregated (:mod:`sparkvision.drift.spark`): predicted classes, the confidence
histogram, errors, image sizes and modes, and the per-dimension mean and variance of the
model's pooled features. The reference profile is the snapshot of the model's own
held-out validation predictions, saved in the model directory at ``fit``/``train`` time
(:data:`PROFILE_FILE`); :func:`compare` judges a later snapshot against it.

Every histogram uses fixed bins (:data:`CONFIDENCE_EDGES`, :data:`SIZE_EDGES`,
:data:`BYTES_EDGES`), so a reference and a window are always counted alike and the
profile stays a few tens of KB (the 1,280 feature means and variances are most of it).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

PROFILE_FILE = "drift_profile.json"
PROFILE_VERSION = 1

#: Confidence (the largest class probability) bins: [e_i, e_i+1), the last one closed at 1.
#: 0.5 is an edge, so the low-confidence share reads straight off the histogram.
CONFIDENCE_EDGES = (0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
#: A prediction below this confidence counts as low-confidence.
LOW_CONFIDENCE = 0.5
#: Width and height (pixels) bins: half-octave edges from 16 to 8192 (two open ends).
SIZE_EDGES = tuple(round(16 * 2 ** (k / 2)) for k in range(19))
#: Encoded file size (bytes) bins: half-octave edges from 512 B to 64 MiB (two open ends).
BYTES_EDGES = tuple(round(512 * 2 ** (k / 2)) for k in range(35))

#: PSI's floor for a share, so an empty bin on one side gives a large finite term.
PSI_EPSILON = 1e-4
#: A feature dimension's variance floor, as a fraction of the mean variance (dead dimensions
#: would otherwise turn noise into huge standardised shifts).
VARIANCE_FLOOR = 1e-3


@dataclass(frozen=True)
class Thresholds:
    """When ``drift`` calls a signal drifted (the defaults of ``sparkvision drift``).

    * ``psi`` 0.25: the usual reading of PSI is below 0.1 stable, 0.1-0.25 a moderate
      change, above 0.25 a significant one.
    * ``feature_shift`` 0.1: the model's pooled features moved by a tenth of their
      reference standard deviation (root mean square over dimensions, sampling noise
      removed; see :func:`feature_shift`). Held-out photos of the same distribution
      measure about 0.00-0.06 at 100-200 images; a Gaussian blur of radius 2 about 0.3.
    * ``error_share`` 0.05: the share of rows with an error rose by 5 points over the
      reference's.
    """

    psi: float = 0.25
    feature_shift: float = 0.1
    error_share: float = 0.05

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not (isinstance(value, int | float) and value > 0 and math.isfinite(value)):
                raise ValueError(f"threshold {name} must be a positive number, got {value!r}")


# --------------------------------------------------------------------------- bins and PSI


def bin_index(values: np.ndarray | Sequence[float], edges: Sequence[float]) -> np.ndarray:
    """Bin of each value: how many inner edges are <= it (so a value on an edge goes up, and the
    outer edges are open ends). The Spark side counts with the same rule."""
    return np.searchsorted(np.asarray(edges[1:-1], dtype=float), np.asarray(values, dtype=float), side="right")


def histogram(values: np.ndarray | Sequence[float], edges: Sequence[float]) -> list[int]:
    """Counts per bin of :func:`bin_index` (``len(edges) - 1`` bins)."""
    return np.bincount(bin_index(values, edges), minlength=len(edges) - 1).astype(int).tolist()


def psi(reference: Sequence[float], current: Sequence[float], epsilon: float = PSI_EPSILON) -> float | None:
    """Population stability index of two histograms over the same bins (counts or shares).

    ``sum((q - p) * ln(q / p))`` over the bins, with p the reference's and q the current
    shares, each floored at ``epsilon`` so an empty bin gives a large finite term; bins
    empty on both sides add nothing. None when either side has no rows.
    """
    p = np.asarray(reference, dtype=float)
    q = np.asarray(current, dtype=float)
    if p.shape != q.shape:
        raise ValueError(f"PSI needs histograms over the same bins, got {p.size} and {q.size}")
    if p.sum() <= 0 or q.sum() <= 0:
        return None
    p = np.maximum(p / p.sum(), epsilon)
    q = np.maximum(q / q.sum(), epsilon)
    return float(np.sum((q - p) * np.log(q / p)))


def category_psi(reference: Mapping[str, float], current: Mapping[str, float],
                 categories: Sequence[str] | None = None) -> float | None:
    """:func:`psi` of two category counts (classes, image modes) over ``categories`` or their union."""
    keys = list(categories) if categories is not None else sorted(set(reference) | set(current))
    return psi([reference.get(k, 0) for k in keys], [current.get(k, 0) for k in keys])


def feature_shift(ref_mean: Sequence[float], ref_var: Sequence[float], ref_rows: int,
                  cur_mean: Sequence[float], cur_var: Sequence[float], cur_rows: int) -> float | None:
    """How far the features' mean moved, in reference standard deviations, sampling noise removed.

    Per dimension d, ``z_d = (mean_d - ref_mean_d) / sd_d`` with ``sd_d`` the reference's (its
    variance floored at :data:`VARIANCE_FLOOR` of the mean variance). Two samples of one
    distribution still differ: ``E[z_d^2] = (cur_var_d / cur_rows + ref_var_d / ref_rows) / sd_d^2``.
    The statistic is ``sqrt(max(0, mean_d(z_d^2 - that noise)))``: an effect size that stays
    near 0 without drift whatever the sample sizes, and grows with the shift. None when
    either side has fewer than 2 rows.
    """
    if ref_rows < 2 or cur_rows < 2:
        return None
    m0, v0 = np.asarray(ref_mean, dtype=float), np.asarray(ref_var, dtype=float)
    m1, v1 = np.asarray(cur_mean, dtype=float), np.asarray(cur_var, dtype=float)
    if not (m0.shape == v0.shape == m1.shape == v1.shape):
        raise ValueError(f"feature moments of different lengths: reference {m0.size}, current {m1.size} "
                         "(another backbone?)")
    scale = v0 + VARIANCE_FLOOR * float(np.mean(v0))
    excess = (m1 - m0) ** 2 / scale - (v1 / cur_rows + v0 / ref_rows) / scale
    return float(math.sqrt(max(0.0, float(np.mean(excess)))))


# --------------------------------------------------------------------------- snapshots


@dataclass
class Snapshot:
    """What one set of predictions looked like, as counts and moments (the profile's body)."""

    #: Prediction rows, and those with an error (no prediction).
    rows: int
    error_rows: int
    #: Predicted rows per class (every label of the model, zeros included).
    class_counts: dict[str, int]
    #: Rows per confidence bin (:data:`CONFIDENCE_EDGES`).
    confidence: list[int]
    #: Images whose bytes were read and whose header parsed, and those that could not be.
    image_rows: int = 0
    image_errors: int = 0
    width: list[int] = field(default_factory=list)  # per SIZE_EDGES bin
    height: list[int] = field(default_factory=list)  # per SIZE_EDGES bin
    bytes: list[int] = field(default_factory=list)  # per BYTES_EDGES bin
    modes: dict[str, int] = field(default_factory=dict)
    #: Pooled-feature moments: which model output ("features", or "logits" for a graph
    #: without pooled features), the rows, and the per-dimension mean and variance.
    feature_role: str | None = None
    feature_rows: int = 0
    feature_mean: list[float] = field(default_factory=list)
    feature_var: list[float] = field(default_factory=list)

    @property
    def predicted_rows(self) -> int:
        return self.rows - self.error_rows

    def share(self, part: int, whole: int) -> float | None:
        return part / whole if whole else None

    @property
    def error_share(self) -> float | None:
        return self.share(self.error_rows, self.rows)

    @property
    def low_confidence_share(self) -> float | None:
        low = sum(c for c, lower in zip(self.confidence, CONFIDENCE_EDGES, strict=False) if lower < LOW_CONFIDENCE)
        return self.share(low, sum(self.confidence))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["feature_mean"] = _rounded(self.feature_mean)
        data["feature_var"] = _rounded(self.feature_var)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Snapshot:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def _rounded(values: Sequence[float], digits: int = 5) -> list[float]:
    """Five significant digits: a small file, far finer than sampling noise."""
    return [float(f"{v:.{digits}g}") for v in values]


@dataclass
class Profile:
    """A model's reference profile: the snapshot of its held-out predictions and where it came from."""

    labels: list[str]
    reference: Snapshot
    #: What the reference predictions were made on (the validation source, or the training one).
    source: str
    created: str = ""
    format_version: int = PROFILE_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": self.format_version, "source": self.source, "created": self.created,
                "labels": list(self.labels),
                "bins": {"confidence": list(CONFIDENCE_EDGES), "size": list(SIZE_EDGES), "bytes": list(BYTES_EDGES)},
                "reference": self.reference.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Profile:
        if data.get("format_version", 1) > PROFILE_VERSION:
            raise ValueError(f"drift profile format {data['format_version']} is newer than this sparkvision "
                             f"understands ({PROFILE_VERSION})")
        bins = data.get("bins") or {}
        for name, edges in (("confidence", CONFIDENCE_EDGES), ("size", SIZE_EDGES), ("bytes", BYTES_EDGES)):
            if name in bins and [float(e) for e in bins[name]] != [float(e) for e in edges]:
                raise ValueError(f"drift profile counts {name} in other bins than this sparkvision; "
                                 "rebuild it with this version")
        return cls(labels=list(data["labels"]), reference=Snapshot.from_dict(data["reference"]),
                   source=str(data.get("source", "")), created=str(data.get("created", "")),
                   format_version=int(data.get("format_version", 1)))


def profile_path(model_dir: str | Path) -> Path:
    return Path(model_dir) / PROFILE_FILE


def has_profile(model_dir: str | Path | None) -> bool:
    return bool(model_dir) and profile_path(model_dir).is_file()  # type: ignore[arg-type]


def save_profile(model_dir: str | Path, profile: Profile) -> Path:
    from sparkvision.storage import atomic_write

    return atomic_write(profile_path(model_dir), json.dumps(profile.to_dict(), separators=(",", ":")) + "\n")


def load_profile(model_dir: str | Path) -> Profile:
    path = profile_path(model_dir)
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} has no drift profile ({PROFILE_FILE}); 'sparkvision fit' and "
                                "'sparkvision train' write one from the model's validation predictions")
    try:
        return Profile.from_dict(json.loads(path.read_text("utf-8")))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a valid drift profile: {exc}") from exc


# --------------------------------------------------------------------------- the verdict


@dataclass
class Signal:
    """One compared signal: its statistic, the threshold it is judged by (None: shown, not judged)."""

    name: str
    statistic: str  # "psi", "feature_shift", "share_increase"
    value: float | None
    threshold: float | None
    reference: Any = None
    current: Any = None
    note: str = ""

    @property
    def drifted(self) -> bool:
        return self.value is not None and self.threshold is not None and self.value > self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "drift": self.drifted}


def _shares(counts: Mapping[str, int]) -> dict[str, float]:
    total = sum(counts.values())
    return {k: round(v / total, 4) for k, v in counts.items()} if total else {}


def compare(profile: Profile, current: Snapshot, thresholds: Thresholds | None = None) -> list[Signal]:
    """Every signal of ``current`` judged against the profile's reference.

    Prediction signals always; image signals when images were read, feature shift when
    features were computed for both sides (the same model output).
    """
    t = thresholds or Thresholds()
    ref = profile.reference
    signals = [
        Signal("class_shares", "psi", category_psi(ref.class_counts, current.class_counts, profile.labels), t.psi,
               _shares(ref.class_counts), _shares(current.class_counts)),
        Signal("confidence", "psi", psi(ref.confidence, current.confidence), t.psi,
               ref.confidence, current.confidence, "rows per bin of CONFIDENCE_EDGES"),
        Signal("low_confidence_share", "share", _round(current.low_confidence_share), None,
               _round(ref.low_confidence_share), _round(current.low_confidence_share),
               f"predictions below {LOW_CONFIDENCE} confidence (shown; judged through the confidence PSI)"),
    ]
    ref_err, cur_err = ref.error_share or 0.0, current.error_share
    signals.append(Signal("error_share", "share_increase", None if cur_err is None else _round(cur_err - ref_err),
                          t.error_share, _round(ref_err), _round(cur_err), "rows with an error, in points over the "
                          "reference's"))
    if current.image_rows and ref.image_rows:
        for name in ("width", "height", "bytes"):
            signals.append(Signal(f"image_{name}", "psi", psi(getattr(ref, name), getattr(current, name)), t.psi,
                                  note=f"{current.image_rows} images read"))
        signals.append(Signal("image_mode", "psi", category_psi(ref.modes, current.modes), t.psi,
                              _shares(ref.modes), _shares(current.modes)))
    if current.feature_rows and ref.feature_rows:
        if current.feature_role != ref.feature_role:
            raise ValueError(f"the profile holds the model's {ref.feature_role!r} output, this window its "
                             f"{current.feature_role!r}")
        signals.append(Signal(
            "feature_shift", "feature_shift",
            feature_shift(ref.feature_mean, ref.feature_var, ref.feature_rows,
                          current.feature_mean, current.feature_var, current.feature_rows),
            t.feature_shift, note=f"{current.feature_role} of {current.feature_rows} images vs "
                                  f"{ref.feature_rows} reference images"))
    for s in signals:
        s.value = _round(s.value)
    return signals


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_window(text: str) -> timedelta:
    """``--window``: a number and a unit, ``90s``, ``30m``, ``12h``, ``1d`` or ``2w``."""
    match = _DURATION.match(text or "")
    if not match or float(match[1]) <= 0:
        raise ValueError(f"--window takes a positive duration like 30m, 12h, 1d or 2w, got {text!r}")
    return timedelta(**{_UNITS[match[2]]: float(match[1])})
