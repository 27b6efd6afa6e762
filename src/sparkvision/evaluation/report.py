"""``metrics.json`` and a self-contained ``report.html`` for one model's predictions, and side-by-side comparisons.

The HTML opens anywhere with no network: styles are inline and every plot and
thumbnail is a ``data:`` URI. Plots are drawn on bare matplotlib Figures (no pyplot),
so the application's matplotlib backend is left as it is.

Sections: summary, per-class table, confusion-matrix heat map, reliability diagram,
training curves (when the model directory has ``curves.csv``), drift against the model's
reference profile (when it has ``drift_profile.json``), and a gallery of the
most confidently wrong predictions (found with Spark's top-N, so only those rows
reach the driver).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pyspark.sql import DataFrame, SparkSession

from sparkvision import __version__
from sparkvision.config import EvaluationSettings
from sparkvision.evaluation.metrics import EvaluationResult, most_confidently_wrong
from sparkvision.evaluation.thumbnails import thumbnails
from sparkvision.storage import atomic_write

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"
CURVES_FILE = "curves.csv"
COMPARE_JSON = "compare.json"
COMPARE_HTML = "compare.html"


# --------------------------------------------------------------------------- plots

def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def heatmap_classes(result: EvaluationResult, limit: int) -> list[int]:
    """Indices of the classes to draw: all of them, or the ``limit`` with the most errors."""
    matrix = np.asarray(result.confusion_matrix, dtype=np.int64)
    n = len(result.confusion_labels)
    if n <= limit:
        return list(range(n))
    off = matrix - np.diag(np.diag(matrix))
    errors = off.sum(axis=0) + off.sum(axis=1)
    keep = np.argsort(-errors, kind="stable")[:limit]
    return sorted(int(i) for i in keep)


def plot_confusion(result: EvaluationResult, limit: int) -> str:
    """Counts coloured by row share (recall per cell), so small classes read as clearly as large ones."""
    keep = heatmap_classes(result, limit)
    labels = [result.confusion_labels[i] for i in keep]
    matrix = np.asarray(result.confusion_matrix, dtype=np.int64)[np.ix_(keep, keep)]
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=float), where=rows > 0)
    n = len(labels)
    side = min(16.0, max(4.5, 0.42 * n + 2.5))
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=8 if n > 20 else 9)
    ax.set_yticks(range(n), labels, fontsize=8 if n > 20 else 9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 25:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(j, i, f"{matrix[i, j]:,}", ha="center", va="center", fontsize=7 if n > 12 else 8,
                            color="white" if share[i, j] > 0.55 else "#1f2937")
    title = "Confusion matrix (colour: share of the true class)"
    if n < len(result.confusion_labels):
        title += f"\n{n} of {len(result.confusion_labels)} classes: those with the most errors"
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return _png(fig)


def plot_reliability(result: EvaluationResult) -> str | None:
    bins = result.calibration
    if not bins:
        return None
    fig = Figure(figsize=(5.6, 6.2))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    width = bins[0].upper - bins[0].lower
    centers = [(b.lower + b.upper) / 2 for b in bins]
    accs = [b.accuracy if b.accuracy is not None else 0.0 for b in bins]
    confs = [b.confidence if b.confidence is not None else 0.0 for b in bins]
    filled = [b.count > 0 for b in bins]
    top.plot([0, 1], [0, 1], ls="--", color="#6b7280", lw=1, label="perfect calibration")
    shown = [(c, a, k) for c, a, k, f in zip(centers, accs, confs, filled, strict=True) if f]
    top.bar([c for c, _, _ in shown], [a for _, a, _ in shown], width=width * 0.95, color="#3b82f6",
            edgecolor="#1e3a8a", alpha=0.85, label="accuracy")
    # The gap between accuracy and mean confidence, hatched so it reads on top of a bar or above it.
    top.bar([c for c, _, _ in shown], [abs(k - a) for _, a, k in shown], bottom=[min(a, k) for _, a, k in shown],
            width=width * 0.95, fill=False, hatch="///", edgecolor="#dc2626", lw=0.8, label="gap to confidence")
    top.scatter([c for c, _, _ in shown], [k for _, _, k in shown], marker="_", s=220, color="#111827",
                zorder=3, label="mean confidence")
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    ece = f"{result.ece:.4f}" if result.ece is not None else "n/a"
    top.set_title(f"Reliability diagram ({len(bins)} bins, ECE {ece})", fontsize=10)
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(centers, [b.count for b in bins], width=width * 0.95, color="#9ca3af")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("confidence (largest probability)")
    bottom.set_ylabel("rows")
    return _png(fig)


def read_curves(model_dir: str | Path | None) -> pd.DataFrame | None:
    if not model_dir:
        return None
    path = Path(model_dir) / CURVES_FILE
    if not path.is_file():
        return None
    try:
        curves = pd.read_csv(path)
    except (ValueError, OSError) as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None
    numeric = curves.apply(pd.to_numeric, errors="coerce")
    numeric = numeric.loc[:, numeric.notna().any()]
    return numeric if len(numeric) else None


#: How curves.csv columns are grouped into panels (first match wins); anything else goes to "other".
_CURVE_PANELS = (
    ("loss", ("loss",)),
    ("accuracy", ("top", "acc", "f1", "precision", "recall", "auc")),
    ("learning rate", ("lr", "learning_rate")),
    ("speed", ("seconds", "per_s", "time", "throughput")),
)


def _panel_of(column: str) -> str:
    name = column.lower()
    for panel, keys in _CURVE_PANELS:
        if panel == "learning rate":
            if name == "lr" or name.startswith(keys):
                return panel
        elif any(key in name for key in keys):
            return panel
    return "other"


def plot_curves(curves: pd.DataFrame) -> str | None:
    """Whatever columns curves.csv has, one panel per kind: losses, accuracies, learning rate (log), speed."""
    x_name = next((c for c in ("epoch", "step", "iteration") if c in curves.columns), None)
    x = curves[x_name] if x_name else pd.Series(range(1, len(curves) + 1))
    groups: dict[str, list[str]] = {}
    for column in curves.columns:
        if column != x_name:
            groups.setdefault(_panel_of(column), []).append(column)
    order = [p for p, _ in _CURVE_PANELS] + ["other"]
    panels = [(name, groups[name]) for name in order if name in groups]
    if not panels:
        return None
    fig = Figure(figsize=(4.2 * len(panels), 3.5))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (name, cols) in zip(axes[0], panels, strict=True):
        for col in cols:
            ax.plot(x, curves[col], marker="o", ms=3, lw=1.5, label=col)
        if name == "learning rate" and (curves[cols].dropna() > 0).all().all():
            ax.set_yscale("log")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(x_name or "row")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


# --------------------------------------------------------------------------- HTML

_CSS = """
:root { --ink:#111827; --muted:#6b7280; --line:#e5e7eb; --accent:#2563eb; --bad:#b91c1c; --bg:#f9fafb; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
       margin: 0; background: var(--bg); }
header { background: #0f172a; color: #f8fafc; padding: 18px 28px; }
header h1 { margin: 0 0 4px; font-size: 20px; }
header p { margin: 0; color: #cbd5e1; font-size: 12px; }
main { max-width: 1200px; margin: 0 auto; padding: 8px 24px 40px; }
section { background: white; border: 1px solid var(--line); border-radius: 8px; padding: 16px 20px; margin: 18px 0; }
h2 { font-size: 16px; margin: 0 0 12px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 10px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; }
.card .v { font-size: 22px; font-weight: 600; }
.card .k { color: var(--muted); font-size: 12px; }
.notes { color: var(--muted); font-size: 13px; margin: 10px 0 0; padding-left: 18px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { padding: 4px 8px; border-bottom: 1px solid var(--line); text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f4f6; position: sticky; top: 0; }
td.bar { position: relative; }
td.bar span { position: relative; z-index: 1; }
td.bar i { position: absolute; left: 0; top: 3px; bottom: 3px; background: #dbeafe; z-index: 0; }
tr.flag td:first-child::after { content: attr(data-flag); color: var(--bad); font-size: 11px; margin-left: 6px; }
.scroll { max-height: 520px; overflow: auto; }
img.plot { max-width: 100%; height: auto; display: block; margin: 0 auto; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 12px; }
.gallery figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 6px; background: #fff; }
.gallery img { width: 100%; height: 150px; object-fit: contain; background: #f3f4f6; display: block; }
.gallery .missing { height: 150px; display: flex; align-items: center; justify-content: center; color: var(--muted);
                    background: #f3f4f6; font-size: 11px; padding: 6px; text-align: center; }
.gallery figcaption { font-size: 12px; margin-top: 4px; word-break: break-word; }
.gallery .t { color: #047857; } .gallery .p { color: var(--bad); } .gallery .c { color: var(--muted); }
.gallery .path { color: var(--muted); font-size: 10px; }
"""


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return html.escape(str(value))


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _bar(value: float | None) -> str:
    """A table cell with the value over a bar of its share of 1."""
    if value is None:
        return "<td>n/a</td>"
    return f'<td class="bar"><i style="width:{100 * value:.1f}%"></i><span>{value:.4f}</span></td>'


def _summary_section(cards: Sequence[tuple[str, str]], notes: Sequence[str]) -> str:
    """The summary: one card per headline number (name, formatted value), then notes on what was counted how."""
    body = "".join(f'<div class="card"><div class="v">{v}</div><div class="k">{html.escape(k)}</div></div>'
                   for k, v in cards)
    items = "".join(f"<li>{n}</li>" for n in notes)
    return f'<section id="summary"><h2>Summary</h2><div class="cards">{body}</div><ul class="notes">{items}</ul></section>'


def _figure(path: str, data_uri: str | None, error: str | None, missing: str, caption: str) -> str:
    """A gallery tile: the image (or why there is none), the caption's HTML, then the path."""
    if data_uri:
        image = f'<img class="thumb" alt="{html.escape(path)}" src="{data_uri}">'
    else:
        image = f'<div class="missing">{missing}: {html.escape(error or "unreadable")}</div>'
    return (f'<figure>{image}<figcaption>{caption}'
            f'<div class="path">{html.escape(path)}</div></figcaption></figure>')


def _curves_section(png: str | None, columns: Sequence[str]) -> str:
    return _img_section("curves", "Training curves", png, "training curves",
                        "From curves.csv: " + html.escape(", ".join(columns)))


def training_curves(model_dir: str | Path | None) -> tuple[str | None, list[str]]:
    """The training-curves plot of a model directory's ``curves.csv`` and its columns; (None, []) without one."""
    curves = read_curves(model_dir)
    if curves is None:
        return None, []
    return plot_curves(curves), list(curves.columns)


def auto_selection(model_dir: str | Path | None) -> dict[str, Any] | None:
    """The comparison ``fit --auto`` wrote into a model directory's card (``provenance.model_selection.auto``)."""
    if not model_dir or not (Path(model_dir) / "sparkvision_model.json").is_file():
        return None
    from sparkvision.models.model_dir import load_card

    selection = load_card(model_dir).provenance.get("model_selection")
    return selection.get("auto") if isinstance(selection, dict) else None


def _auto_section(auto: dict[str, Any] | None) -> str:
    """How ``fit --auto`` chose this model: every candidate's scores and times, the chosen one marked."""
    if not auto:
        return ""
    columns = [("candidate", "candidate"), ("GFLOPs", "gflops"), ("regParam", "regParam"),
               ("standardization", "standardization"), ("CV accuracy", "cv_accuracy"),
               ("val accuracy", "val_accuracy"), ("featurize s", "featurize_seconds"), ("fit s", "fit_seconds")]
    head = "".join(f"<th>{html.escape(name)}</th>" for name, _ in columns) + "<th>chosen</th>"
    rows = []
    for r in auto.get("table", []):
        values = [r.get(key) for _, key in columns]
        cells = "".join(f"<td>{({True: 'yes', False: 'no'}[v] if isinstance(v, bool) else _fmt(v))}</td>"
                        for v in values)
        attr = ' class="chosen"' if r.get("chosen") else ""
        rows.append(f"<tr{attr}>{cells}<td>{'yes' if r.get('chosen') else ''}</td></tr>")
    cost = auto.get("cost") or {}
    notes = [f"Chosen by {html.escape(str(auto.get('selected_by', '')).replace('_', ' '))}; ties go to fewer GFLOPs."]
    if cost:
        notes.append(f"Cost stated beforehand: {_fmt(cost.get('total_seconds'))} s "
                     f"({html.escape(str(cost.get('method', '')))}).")
    notes += [html.escape(n) for n in auto.get("notes", [])]
    items = "".join(f"<li>{n}</li>" for n in notes)
    return ('<section id="auto-selection"><h2>Model selection (fit --auto)</h2><div class="scroll">'
            f'<table id="auto-table"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
            f'<ul class="notes">{items}</ul></section>')


def drift_summary(predictions: DataFrame | None, model_dir: str | Path | None) -> dict[str, Any] | None:
    """The prediction signals of ``sparkvision drift`` (class shares, confidence, errors) for these
    predictions against the model directory's drift profile; None without a profile. One Spark
    aggregation; the image and feature signals, which re-read images, are left to ``drift``."""
    from sparkvision.drift.stats import Snapshot, compare, has_profile, load_profile

    if predictions is None or not has_profile(model_dir):
        return None
    from sparkvision.drift.spark import prediction_counts

    profile = load_profile(model_dir)  # type: ignore[arg-type]
    current = Snapshot(**prediction_counts(predictions, profile.labels))
    return {"reference_rows": profile.reference.rows, "reference_source": profile.source, "rows": current.rows,
            "signals": [s.to_dict() for s in compare(profile, current)]}


def _drift_section(drift: dict[str, Any] | None) -> str:
    """These predictions against the reference profile: one row per signal, drifted ones flagged."""
    if not drift:
        return ""
    rows = []
    for sig in drift["signals"]:
        verdict = "drift" if sig["drift"] else ("-" if sig["threshold"] is None else "ok")
        ref = sig["reference"] if not isinstance(sig["reference"], list | dict) else None
        cur = sig["current"] if not isinstance(sig["current"], list | dict) else None
        attr = ' class="flag" data-flag="drift"' if sig["drift"] else ""
        rows.append(f"<tr{attr}><td>{html.escape(sig['name'].replace('_', ' '))}</td>"
                    f"<td>{html.escape(sig['statistic'].replace('_', ' '))}</td><td>{_fmt(sig['value'])}</td>"
                    f"<td>{_fmt(sig['threshold'])}</td><td>{_fmt(ref)}</td><td>{_fmt(cur)}</td>"
                    f"<td>{verdict}</td></tr>")
    shares = next((s for s in drift["signals"] if s["name"] == "class_shares"), None)
    share_rows = "".join(
        f"<tr><td>{html.escape(label)}</td><td>{_pct(ref)}</td><td>{_pct(shares['current'].get(label))}</td></tr>"
        for label, ref in (shares["reference"] if shares else {}).items())
    note = (f"{drift['rows']:,} prediction rows against the profile of {drift['reference_rows']:,} reference rows "
            f"({html.escape(drift['reference_source'])}), stored in the model directory by fit or train. "
            "PSI above 0.25 is a significant shift. The image and feature-shift signals re-read images: run "
            "<code>sparkvision drift</code> for them.")
    return ('<section id="drift"><h2>Drift against the reference profile</h2><div class="scroll">'
            '<table id="drift-table"><thead><tr><th>signal</th><th>statistic</th><th>value</th><th>threshold</th>'
            f'<th>reference</th><th>now</th><th>verdict</th></tr></thead><tbody>{"".join(rows)}</tbody></table>'
            '<table id="drift-shares"><thead><tr><th>predicted class</th><th>reference share</th><th>share now</th>'
            f'</tr></thead><tbody>{share_rows}</tbody></table></div><p class="notes">{note}</p></section>')


def model_name(source: dict[str, Any] | None, model_dir: str | Path | None) -> str | None:
    """The model's name for a report title: the card's, else the model directory's."""
    return (source or {}).get("model") or (Path(model_dir).name if model_dir else None)


def _source_line(source: dict[str, Any] | None, keys: Sequence[str]) -> str:
    """The header line under a report's title: where its inputs came from, and when and by what it was made."""
    subtitle = " · ".join(html.escape(f"{k}: {v}") for k, v in (source or {}).items() if k in keys and v)
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"{subtitle}{' · ' if subtitle else ''}generated {generated} by sparkvision {__version__}"


def _page(title: str, header: str, sections: Sequence[str], css: str = "") -> str:
    """A whole self-contained page: ``sections`` (empty ones dropped) under a header with ``title``."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # No network: forbid every remote fetch so a report can never leak or depend on one.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'\">",
        f"<title>{html.escape(title)}</title><style>{_CSS}{css}</style></head><body>",
        f"<header><h1>{html.escape(title)}</h1><p>{header}</p></header><main>",
        *sections,
        "</main></body></html>",
    ]
    return "\n".join(p for p in parts if p)


def _write_files(out_dir: str | Path, metrics: dict[str, Any], page: Callable[[], str]) -> Path:
    """Write ``metrics.json``, then the HTML that ``page`` renders, into ``out_dir``; return the HTML path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
    path = out / REPORT_FILE
    atomic_write(path, page())
    log.info("wrote %s and %s", out / METRICS_FILE, path)
    return path


@dataclass
class GalleryItem:
    path: str
    label: str
    prediction: str
    confidence: float | None
    data_uri: str | None
    error: str | None = None


@dataclass
class Report:
    """What ``report.html`` shows; built by :func:`build_report`, written by :func:`write_report`."""

    result: EvaluationResult
    title: str
    confusion_png: str | None = None
    reliability_png: str | None = None
    curves_png: str | None = None
    curves_columns: list[str] = field(default_factory=list)
    #: The candidates ``fit --auto`` compared to choose this model (from its card), if it did.
    auto_selection: dict[str, Any] | None = None
    gallery: list[GalleryItem] = field(default_factory=list)
    heatmap_note: str = ""
    #: These predictions against the model's drift profile (:func:`drift_summary`), when it has one.
    drift: dict[str, Any] | None = None


def _summary_html(r: EvaluationResult) -> str:
    cards = [("accuracy", _pct(r.accuracy))]
    cards += [(f"top-{k} accuracy", _pct(v)) for k, v in sorted(r.top_k.items()) if k != 1]
    cards += [
        ("balanced accuracy", _pct(r.balanced_accuracy)),
        ("macro F1", _fmt(r.macro.f1 if r.macro else None)),
        ("weighted F1", _fmt(r.weighted.f1 if r.weighted else None)),
        ("log loss", _fmt(r.log_loss)),
        ("ECE", _fmt(r.ece)),
        ("rows evaluated", _fmt(r.evaluated_rows)),
        ("rows with errors", _fmt(r.error_rows)),
        ("rows without label", _fmt(r.unlabeled_rows)),
    ]
    notes = [
        f"{r.rows:,} prediction rows: {r.evaluated_rows:,} evaluated, {r.error_rows:,} with errors, "
        f"{r.unlabeled_rows:,} without a true label" + (f", {r.invalid_rows:,} without a prediction" if r.invalid_rows
                                                        else "") + ". Only evaluated rows enter the metrics."
    ]
    if r.error_kinds:
        notes.append("Errors by kind: " + ", ".join(f"{html.escape(k)} {v:,}" for k, v in r.error_kinds.items()) + ".")
    if r.unseen_labels:
        notes.append(f"{r.unseen_label_rows:,} rows have true labels the model was not trained on "
                     f"({html.escape(', '.join(r.unseen_labels))}): they count as errors everywhere, and "
                     f"log loss is averaged over the other {r.log_loss_rows:,} rows.")
    if r.never_predicted:
        notes.append("Never predicted: " + html.escape(", ".join(r.never_predicted)) + " (precision 0).")
    if r.missing_probability_rows:
        notes.append(f"{r.missing_probability_rows:,} evaluated rows have no usable probability vector: "
                     "top-k, log loss and calibration leave them out.")
    if r.argmax_mismatch_rows:
        notes.append(f"{r.argmax_mismatch_rows:,} rows predict a label that is not their most probable one: "
                     "check that the model labels are in probability order.")
    return _summary_section(cards, notes)


def _per_class_html(r: EvaluationResult) -> str:
    rows = []
    for c in r.per_class:
        flag = "unseen in training" if c.in_model is False else ("never predicted" if c.predicted == 0 else "")
        cells = [f"<td>{html.escape(c.label)}</td>", _bar(c.precision), _bar(c.recall), _bar(c.f1),
                 f"<td>{c.support:,}</td>", f"<td>{c.predicted:,}</td>"]
        attr = f' class="flag" data-flag="{html.escape(flag)}"' if flag else ""
        rows.append(f"<tr{attr}>{''.join(cells)}</tr>")
    avg = []
    for name, a in (("macro average", r.macro), ("weighted average", r.weighted)):
        if a:
            avg.append(f"<tr><th>{name}</th><th>{a.precision:.4f}</th><th>{a.recall:.4f}</th><th>{a.f1:.4f}</th>"
                       f"<th>{r.evaluated_rows:,}</th><th></th></tr>")
    return (
        '<section id="per-class"><h2>Per class</h2><div class="scroll"><table id="per-class-table">'
        "<thead><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th><th>predicted</th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody><tfoot>{''.join(avg)}</tfoot></table></div></section>"
    )


def _img_section(ident: str, title: str, uri: str | None, alt: str, note: str = "") -> str:
    if not uri:
        return ""
    extra = f'<p class="notes">{note}</p>' if note else ""
    return (f'<section id="{ident}"><h2>{html.escape(title)}</h2>'
            f'<img class="plot" id="{ident}-img" alt="{html.escape(alt)}" src="{uri}">{extra}</section>')


def _gallery_html(items: Sequence[GalleryItem]) -> str:
    if not items:
        return ('<section id="gallery"><h2>Most confidently wrong</h2>'
                '<p class="notes">No wrong predictions among the evaluated rows.</p></section>')
    figures = []
    for item in items:
        conf = "n/a" if item.confidence is None else f"{item.confidence:.3f}"
        figures.append(_figure(
            item.path, item.data_uri, item.error, "no thumbnail",
            f'<div class="t">true: {html.escape(item.label)}</div>'
            f'<div class="p">predicted: {html.escape(item.prediction)} <span class="c">({conf})</span></div>'))
    return (f'<section id="gallery"><h2>Most confidently wrong ({len(items)})</h2>'
            f'<div class="gallery">{"".join(figures)}</div></section>')


def render_html(report: Report) -> str:
    r = report.result
    return _page(report.title, _source_line(r.source, ("model", "predictions", "model_dir")), [
        _summary_html(r),
        _img_section("confusion", "Confusion matrix", report.confusion_png, "confusion-matrix heat map",
                     report.heatmap_note),
        _per_class_html(r),
        _img_section("reliability", "Calibration", report.reliability_png, "reliability diagram",
                     "Bars: accuracy of the rows whose confidence falls in each bin (equal-width bins, right-closed); "
                     "black ticks: their mean confidence; hatched: the gap. ECE is the row-weighted mean gap."),
        _curves_section(report.curves_png, report.curves_columns),
        _auto_section(report.auto_selection),
        _drift_section(report.drift),
        _gallery_html(report.gallery),
    ])


def build_report(
    result: EvaluationResult,
    predictions: DataFrame | None = None,
    model_dir: str | Path | None = None,
    spark: SparkSession | None = None,
    images: str | None = None,
    settings: EvaluationSettings | None = None,
    title: str | None = None,
) -> Report:
    settings = settings or EvaluationSettings()
    name = model_name(result.source, model_dir)
    report = Report(result, title or (f"Evaluation of {name}" if name else "Evaluation report"))
    if result.confusion_labels:
        report.confusion_png = plot_confusion(result, settings.max_heatmap_classes)
        shown = len(heatmap_classes(result, settings.max_heatmap_classes))
        if shown < len(result.confusion_labels):
            report.heatmap_note = (f"Showing the {shown} classes with the most errors of "
                                   f"{len(result.confusion_labels)}; metrics.json holds the full matrix.")
    report.reliability_png = plot_reliability(result)
    report.curves_png, report.curves_columns = training_curves(model_dir)
    report.auto_selection = auto_selection(model_dir)
    report.drift = drift_summary(predictions, model_dir)
    if predictions is not None and settings.gallery_size > 0:
        wrong = most_confidently_wrong(predictions, settings.gallery_size)
        spark = spark or predictions.sparkSession
        thumbs = {t.path: t for t in thumbnails(spark, [w["path"] for w in wrong], images, settings)}
        report.gallery = [
            GalleryItem(w["path"], w["label"], w["prediction"], w["confidence"],
                        thumbs[w["path"]].data_uri, thumbs[w["path"]].error)
            for w in wrong
        ]
    return report


def write_report(
    out_dir: str | Path,
    result: EvaluationResult,
    predictions: DataFrame | None = None,
    model_dir: str | Path | None = None,
    spark: SparkSession | None = None,
    images: str | None = None,
    settings: EvaluationSettings | None = None,
    title: str | None = None,
) -> Path:
    """Write ``metrics.json`` and ``report.html`` into ``out_dir`` (a local directory); return the HTML path."""
    return _write_files(out_dir, result.to_dict(), lambda: render_html(
        build_report(result, predictions, model_dir, spark, images, settings, title)))


def load_result(report_dir: str | Path) -> EvaluationResult:
    path = Path(report_dir)
    path = path if path.is_file() else path / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{report_dir} holds no {METRICS_FILE} (write one with 'sparkvision evaluate')")
    return EvaluationResult.from_dict(json.loads(path.read_text("utf-8")))


# --------------------------------------------------------------------------- compare

def _report_name(report_dir: str | Path, result: EvaluationResult, taken: set[str]) -> str:
    base = (result.source or {}).get("model") or Path(report_dir).resolve().name
    name, n = base, 2
    while name in taken:
        name, n = f"{base} ({n})", n + 1
    taken.add(name)
    return name


def compare_reports(report_dirs: Sequence[str | Path]) -> dict[str, Any]:
    """The headline metrics and per-class F1 of several reports, side by side."""
    if not report_dirs:
        raise ValueError("compare needs at least one report directory")
    results = [load_result(d) for d in report_dirs]
    taken: set[str] = set()
    names = [_report_name(d, r, taken) for d, r in zip(report_dirs, results, strict=True)]
    summaries = [r.summary() for r in results]
    keys = list(dict.fromkeys(k for s in summaries for k in s))
    metrics = {k: [s.get(k) for s in summaries] for k in keys}
    classes = sorted({c.label for r in results for c in r.per_class})
    per_class = {
        c: [next((m.f1 for m in r.per_class if m.label == c), None) for r in results] for c in classes
    }
    best = {}
    for k, values in metrics.items():
        known = [(v, i) for i, v in enumerate(values) if isinstance(v, int | float) and v is not None]
        if k in ("rows", "evaluated_rows", "error_rows", "unlabeled_rows") or not known:
            continue
        pick = min(known) if k in ("log_loss", "ece") else max(known)
        best[k] = names[pick[1]]
    return {
        "models": names,
        "reports": [str(d) for d in report_dirs],
        "metrics": metrics,
        "best": best,
        "per_class_f1": per_class,
    }


def render_compare_html(comparison: dict[str, Any]) -> str:
    names = comparison["models"]
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)

    def row(key: str, values: list[Any]) -> str:
        best = comparison["best"].get(key)
        marked = ' class="best" style="font-weight:700;color:#047857"'
        cells = "".join(
            f"<td{marked if best == names[i] else ''}>{_fmt(v)}</td>" for i, v in enumerate(values)
        )
        return f"<tr><td>{html.escape(key)}</td>{cells}</tr>"

    metric_rows = "".join(row(k, v) for k, v in comparison["metrics"].items())
    class_rows = "".join(
        f"<tr><td>{html.escape(c)}</td>{''.join(f'<td>{_fmt(v)}</td>' for v in vals)}</tr>"
        for c, vals in comparison["per_class_f1"].items()
    )
    headline = [k for k in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1")
                if k in comparison["metrics"]]
    headline += [k for k in comparison["metrics"] if k.startswith("top") and k not in ("top1_accuracy",)]
    chart = ""
    if headline:
        fig = Figure(figsize=(max(5.0, 1.3 * len(headline) * max(1, len(names)) / 2 + 3), 3.6))
        ax = fig.subplots()
        width = 0.8 / max(1, len(names))
        for i, name in enumerate(names):
            values = [comparison["metrics"][k][i] or 0.0 for k in headline]
            ax.bar(np.arange(len(headline)) + i * width - 0.4 + width / 2, values, width, label=name)
        ax.set_xticks(range(len(headline)), headline)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        chart = f'<img class="plot" id="compare-chart" alt="headline metrics" src="{_png(fig)}">'
    return _page("Model comparison", html.escape(", ".join(names)), [
        f'<section id="metrics"><h2>Metrics</h2>{chart}<table><thead><tr><th>metric</th>{head}</tr></thead>'
        f"<tbody>{metric_rows}</tbody></table></section>",
        f'<section id="per-class"><h2>F1 per class</h2><div class="scroll"><table><thead><tr><th>class</th>{head}'
        f"</tr></thead><tbody>{class_rows}</tbody></table></div></section>",
    ])


def write_compare(out_dir: str | Path, comparison: dict[str, Any]) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / COMPARE_JSON, json.dumps(comparison, indent=2) + "\n")
    path = out / COMPARE_HTML
    atomic_write(path, render_compare_html(comparison))
    return path
