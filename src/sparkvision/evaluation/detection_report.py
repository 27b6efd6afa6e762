"""``metrics.json`` and a self-contained ``report.html`` for a detector's boxes.

The page follows the classification report (:mod:`sparkvision.evaluation.report`): the same
styles, no network, plots and images as ``data:`` URIs. Sections: summary, precision-recall
curves per class, the per-class AP table, training curves (when the model directory has
``curves.csv``), and a gallery of the worst images (lowest F1 at IoU 0.5 and the score
threshold, found with Spark's top-N) with their true and predicted boxes drawn.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from sparkvision.config import DecodeSettings, DetectionEvaluationSettings, EvaluationSettings
from sparkvision.evaluation.detection_metrics import DetectionResult, OperatingPoint
from sparkvision.evaluation.report import (
    _bar,
    _curves_section,
    _figure,
    _fmt,
    _img_section,
    _page,
    _pct,
    _png,
    _source_line,
    _summary_section,
    _write_files,
    model_name,
    training_curves,
)
from sparkvision.evaluation.thumbnails import read_image_bytes
from sparkvision.io.decode import decode_image, probe_image
from sparkvision.io.errors import ImageError
from sparkvision.preprocess.color import to_model_mode

#: Box colours: true boxes found / missed / difficult; predicted true positives / false positives / ignored.
COLOURS = {
    "found": "#16a34a", "missed": "#f59e0b", "difficult": "#9ca3af",
    "tp": "#2563eb", "fp": "#dc2626", "ignored": "#9ca3af",
}
#: Classes drawn in the precision-recall figure (those with the most positives), so it stays readable.
MAX_CURVE_CLASSES = 24

_DETECTION_CSS = """
.gallery.det { grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); }
.gallery.det img { height: auto; max-height: 360px; }
.gallery.det .missing { height: 220px; }
.legend { display: flex; flex-wrap: wrap; gap: 14px; font-size: 12px; color: var(--muted); margin: 0 0 10px; }
.legend span::before { content: ""; display: inline-block; width: 14px; height: 10px; margin-right: 5px;
                       border: 2px solid var(--c); vertical-align: -1px; }
"""


# --------------------------------------------------------------------------- plots

def plot_pr_curves(result: DetectionResult, limit: int = MAX_CURVE_CLASSES) -> str | None:
    """Precision against recall at IoU 0.5 per class; one panel, or small multiples when there are many classes."""
    curves = result.pr_curves
    if not curves:
        return None
    per_class = {c.label: c for c in result.per_class}
    labels = sorted(curves, key=lambda name: (-per_class[name].positives, name))[:limit]
    single = len(labels) <= 8
    if single:
        fig = Figure(figsize=(6.4, 4.6))
        ax = fig.subplots()
        axes = [ax] * len(labels)
    else:
        cols = 4
        rows = -(-len(labels) // cols)
        fig = Figure(figsize=(3.2 * cols, 2.7 * rows))
        grid = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
        axes = [grid[i // cols][i % cols] for i in range(len(labels))]
        for extra in range(len(labels), rows * cols):
            grid[extra // cols][extra % cols].axis("off")
    for ax, label in zip(axes, labels, strict=True):
        curve = curves[label]
        c = per_class[label]
        name = f"{label} (AP50 {c.ap50:.3f})" if c.ap50 is not None else label
        ax.plot(curve["recall"], curve["precision"], lw=1.8, label=name if single else None)
        if not single:
            ax.set_title(name, fontsize=9)
        at = c.at_threshold
        if at.recall is not None and (at.tp + at.fp):
            ax.scatter([at.recall], [at.precision], s=28, zorder=3, color="#111827")
        ax.set_xlim(0, 1.01)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    threshold = result.settings.get("score_threshold")
    if single:
        ax = axes[0]
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title(f"Precision-recall at IoU 0.5 (dots: score ≥ {threshold})", fontsize=10)
        ax.legend(fontsize=8, loc="lower left")
    else:
        fig.suptitle(f"Precision-recall at IoU 0.5 (dots: score ≥ {threshold})", fontsize=11)
        fig.supxlabel("recall")
        fig.supylabel("precision")
    fig.tight_layout(rect=None if single else (0, 0, 1, 0.98))
    return _png(fig)


# --------------------------------------------------------------------------- drawing

def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType
        return ImageFont.load_default()


def _tag(draw: ImageDraw.ImageDraw, x: float, y: float, text: str, colour: str, font: Any,
         bounds: tuple[int, int]) -> None:
    """A label on a filled background just above the line at ``y`` (below it at the image's top), inside the image."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left + 4, bottom - top + 2
    x = min(max(0.0, x), max(0.0, bounds[0] - w))
    y = min(y - h if y - h >= 0 else y, max(0.0, bounds[1] - h))
    draw.rectangle([x, y, x + w, y + h], fill=colour)
    draw.text((x + 2 - left, y + 1 - top), text, fill="white", font=font)


def draw_boxes(data: bytes, truths: Sequence[dict], boxes: Sequence[dict], size: int,
               decode: DecodeSettings | None = None) -> str:
    """A JPEG data URI of the image (longest side ``size``) with its true and predicted boxes drawn.

    Boxes are in pixels of the image as displayed (EXIF orientation applied), as both the
    truth and the detector's output are.
    """
    decode = decode or DecodeSettings()
    info = probe_image(data, decode, full=False)
    img = decode_image(data, decode, draft=lambda w, h: ("RGB", (size, size)))
    img = to_model_mode(img, 3, decode.alpha_background)
    scale = size / max(info.width, info.height, 1)
    img = img.resize((max(1, round(info.width * scale)), max(1, round(info.height * scale))), Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(img)
    font = _font(max(10, size // 40))
    line = max(2, size // 240)

    def rect(b: dict) -> list[float]:
        return [b["xmin"] * scale, b["ymin"] * scale, b["xmax"] * scale, b["ymax"] * scale]

    for t in truths:
        state = "difficult" if t.get("difficult") else ("found" if t.get("found") else "missed")
        draw.rectangle(rect(t), outline=COLOURS[state], width=line + (1 if state == "missed" else 0))
    for b in boxes:
        draw.rectangle(rect(b), outline=COLOURS[b.get("outcome") or "fp"], width=line)
    # Tags last, so no box line crosses them.
    for t in truths:
        if not t.get("found") and not t.get("difficult"):
            x0, _, _, y1 = rect(t)
            _tag(draw, x0, y1, str(t["label"]), COLOURS["missed"], font, img.size)  # inside, at the bottom
    for b in boxes:
        x0, y0, _, _ = rect(b)
        _tag(draw, x0, y0, f"{b['label']} {b['score']:.2f}", COLOURS[b.get("outcome") or "fp"], font, img.size)
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=88)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# --------------------------------------------------------------------------- HTML

@dataclass
class DetectionGalleryItem:
    path: str
    f1: float
    tp: int
    fp: int
    fn: int
    data_uri: str | None
    error: str | None = None


@dataclass
class DetectionReport:
    result: DetectionResult
    title: str
    pr_png: str | None = None
    curves_png: str | None = None
    curves_columns: list[str] = field(default_factory=list)
    gallery: list[DetectionGalleryItem] = field(default_factory=list)


def _point_text(p: OperatingPoint | None) -> str:
    if p is None:
        return "n/a"
    return f"P {p.precision:.3f} · R {_fmt(p.recall, 3)} · F1 {_fmt(p.f1, 3)}"


def _summary_html(r: DetectionResult) -> str:
    threshold = r.settings.get("score_threshold")
    at, best = r.at_threshold, r.best_f1
    failed = r.image_status.get("prediction_error", 0) + r.image_status.get("no_prediction", 0)
    cards = [
        ("mAP@[.5:.95] (COCO)", _fmt(r.map)),
        ("mAP@0.5 (COCO)", _fmt(r.map50)),
        ("mAP@0.75 (COCO)", _fmt(r.map75)),
        ("VOC AP@0.5", _fmt(r.voc_map50)),
        (f"precision, score ≥ {threshold}", _pct(at.precision if at and (at.tp + at.fp) else None)),
        (f"recall, score ≥ {threshold}", _pct(at.recall if at else None)),
        ("best F1" + (f" (score ≥ {best.score:.3f})" if best and best.score is not None else ""),
         _fmt(best.f1 if best else None)),
        ("images judged", _fmt(r.evaluated_images)),
        ("true boxes", _fmt(r.truths)),
        ("predicted boxes", _fmt(r.predictions)),
        ("images with errors", _fmt(r.image_status.get("prediction_error", 0))),
    ]
    s = r.image_status
    notes = [
        f"{r.images:,} images: {r.evaluated_images:,} judged ({s.get('ok', 0):,} with boxes, "
        f"{s.get('prediction_error', 0):,} whose prediction failed, {s.get('no_prediction', 0):,} never predicted); "
        f"not judged: {s.get('truth_error', 0):,} whose annotation has an error, {s.get('no_truth', 0):,} "
        f"predicted but not in the truth ({r.unjudged_predictions:,} boxes).",
        f"{r.truths:,} true boxes in judged images" + (f", {r.difficult_truths:,} of them difficult (neither found "
                                                        f"nor missed; boxes on them are ignored)"
                                                        if r.difficult_truths else "") + ".",
    ]
    if failed:
        notes.append(f"{r.missed_in_failed_images:,} true boxes are in images whose prediction failed or is "
                     "missing: they count as missed, so failures lower recall and AP.")
    if r.prediction_error_kinds:
        notes.append("Prediction errors by kind: " + ", ".join(
            f"{html.escape(k)} {v:,}" for k, v in r.prediction_error_kinds.items()) + ".")
    if r.truth_error_kinds:
        notes.append("Annotation errors by kind: " + ", ".join(
            f"{html.escape(k)} {v:,}" for k, v in r.truth_error_kinds.items()) + ".")
    if r.capped_predictions:
        notes.append(f"{r.capped_predictions:,} boxes beyond the {r.settings.get('max_detections')} highest scored "
                     "per image and class are left out (COCO's maxDets).")
    if r.invalid_predictions or r.invalid_truths:
        notes.append(f"Left out as invalid (no label, a non-finite value, or max < min): {r.invalid_predictions:,} "
                     f"predicted and {r.invalid_truths:,} true boxes.")
    if r.duplicate_prediction_rows or r.duplicate_truth_rows:
        notes.append(f"Paths seen more than once: {r.duplicate_prediction_rows:,} extra prediction rows and "
                     f"{r.duplicate_truth_rows:,} extra truth rows (their boxes are pooled per path).")
    notes.append(
        "COCO mAP: 101-point interpolated AP averaged over IoU 0.50:0.05:0.95 and the classes with true boxes "
        "(pycocotools' rules); VOC AP: all-point interpolation at IoU > 0.5 with the devkit's matching. "
        f"Scores are rounded to {r.settings.get('score_resolution')}; boxes of equal score count as one step "
        "of the curve."
    )
    return _summary_section(cards, notes)


def _per_class_html(r: DetectionResult) -> str:
    rows = []
    for c in r.per_class:
        flag = "no true boxes" if not c.positives else ("never predicted" if not c.predictions else "")
        at, best = c.at_threshold, c.best_f1
        cells = [f"<td>{html.escape(c.label)}</td>", f"<td>{c.positives:,}</td>", f"<td>{c.predictions:,}</td>",
                 _bar(c.ap), _bar(c.ap50), _bar(c.ap75), _bar(c.voc_ap50),
                 f"<td>{at.precision:.3f}</td>" if (at.tp + at.fp) else "<td>n/a</td>",
                 f"<td>{_fmt(at.recall, 3)}</td>",
                 f"<td>{_fmt(best.f1, 3)} <span class=\"c\">@ {best.score:.3f}</span></td>" if best else "<td>n/a</td>"]
        attr = f' class="flag" data-flag="{html.escape(flag)}"' if flag else ""
        rows.append(f"<tr{attr}>{''.join(cells)}</tr>")
    threshold = r.settings.get("score_threshold")
    foot = (f"<tr><th>mean over classes with true boxes</th><th>{sum(c.positives for c in r.per_class):,}</th>"
            f"<th>{r.predictions:,}</th><th>{_fmt(r.map)}</th><th>{_fmt(r.map50)}</th><th>{_fmt(r.map75)}</th>"
            f"<th>{_fmt(r.voc_map50)}</th><th></th><th></th><th></th></tr>")
    return (
        '<section id="per-class"><h2>Average precision per class</h2><div class="scroll">'
        '<table id="per-class-table"><thead><tr><th>class</th><th>true boxes</th><th>predicted</th>'
        "<th>AP@[.5:.95]</th><th>AP@0.5</th><th>AP@0.75</th><th>VOC AP@0.5</th>"
        f"<th>precision (score &ge; {threshold})</th><th>recall (score &ge; {threshold})</th><th>best F1 @ score</th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody><tfoot>{foot}</tfoot></table></div>"
        '<p class="notes">Precision, recall and F1 at IoU 0.5; a class without true boxes has no AP and does not '
        "enter the means.</p></section>"
    )


def _gallery_html(items: Sequence[DetectionGalleryItem], threshold: float) -> str:
    legend = "".join(
        f'<span style="--c:{COLOURS[key]}">{text}</span>'
        for key, text in (("found", "true box, found"), ("missed", "true box, missed"), ("tp", "predicted, correct"),
                          ("fp", "predicted, false positive"), ("difficult", "difficult / ignored"))
    )
    if not items:
        return ('<section id="gallery"><h2>Worst images</h2>'
                '<p class="notes">No judged image with predictions to show.</p></section>')
    figures = [
        _figure(item.path, item.data_uri, item.error, "no image",
                f'<div>F1 {item.f1:.3f} · <span class="t">{item.tp} found</span> · '
                f'<span class="p">{item.fn} missed · {item.fp} false</span></div>')
        for item in items
    ]
    return (f'<section id="gallery"><h2>Worst images ({len(items)}), lowest F1 first</h2>'
            f'<div class="legend">{legend}</div>'
            f'<p class="notes">Predicted boxes scored &ge; {threshold}, matched at IoU 0.5.</p>'
            f'<div class="gallery det">{"".join(figures)}</div></section>')


def render_html(report: DetectionReport) -> str:
    r = report.result
    threshold = r.settings.get("score_threshold")
    curves_note = ("Each point adds the boxes of one score, highest first: true positives at IoU 0.5 (COCO matching) "
                   "over all boxes so far, and over all true boxes of the class.")
    if len(r.pr_curves) > MAX_CURVE_CLASSES:
        curves_note += (f" Showing the {MAX_CURVE_CLASSES} classes with the most true boxes of {len(r.pr_curves)}; "
                        "metrics.json holds every curve.")
    return _page(report.title, _source_line(r.source, ("model", "predictions", "truth")), [
        _summary_html(r),
        _img_section("pr-curves", "Precision-recall curves", report.pr_png, "precision-recall curves per class",
                     curves_note),
        _per_class_html(r),
        _curves_section(report.curves_png, report.curves_columns),
        _gallery_html(report.gallery, threshold),
    ], _DETECTION_CSS)


def build_report(
    result: DetectionResult,
    worst: Sequence[dict[str, Any]] = (),
    model_dir: str | Path | None = None,
    spark: Any = None,
    images: str | None = None,
    settings: DetectionEvaluationSettings | None = None,
    title: str | None = None,
) -> DetectionReport:
    """The report of ``result``; ``worst`` are :func:`~sparkvision.evaluation.detection.worst_images` rows."""
    settings = settings or DetectionEvaluationSettings()
    name = model_name(result.source, model_dir)
    report = DetectionReport(result, title or (f"Detection evaluation of {name}" if name else "Detection evaluation"))
    report.pr_png = plot_pr_curves(result)
    report.curves_png, report.curves_columns = training_curves(model_dir)
    if worst:
        found = read_image_bytes(spark, [w["path"] for w in worst], images, EvaluationSettings())
        for w in worst:
            data, uri, error = found.get(w["path"]), None, None
            if isinstance(data, bytes):
                try:
                    uri = draw_boxes(data, w["truths"], w["boxes"], settings.thumbnail_px)
                except ImageError as exc:
                    error = exc.message
            else:
                error = str(data) if data is not None else "not found"
            report.gallery.append(DetectionGalleryItem(w["path"], w["f1"], w["tp"], w["fp"], w["fn"], uri, error))
    return report


def write_report(
    out_dir: str | Path,
    result: DetectionResult,
    worst: Sequence[dict[str, Any]] = (),
    model_dir: str | Path | None = None,
    spark: Any = None,
    images: str | None = None,
    settings: DetectionEvaluationSettings | None = None,
    title: str | None = None,
) -> Path:
    """Write ``metrics.json`` and ``report.html`` into ``out_dir`` (a local directory); return the HTML path."""
    return _write_files(out_dir, result.to_dict(), lambda: render_html(
        build_report(result, worst, model_dir, spark, images, settings, title)))

