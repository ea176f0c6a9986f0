"""The evaluation report: one self-contained HTML page (plots embedded as base64 PNG); and the
page of a batch of predictions (write_gallery), which links to the overlay files beside it.

It shows the metrics, ROC and PR curves with the operating point, the score distributions of
both classes against the threshold, the worst-scored images, a per-defect-type breakdown and the
run's training curves (the same drawing as the run's history.png). Nothing is loaded from the
internet, so the page can be archived or mailed as one file.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from surfad import __version__
from surfad.bundle import shipped_row
from surfad.errors import SurfadError
from surfad.metrics import rates_at
from surfad.utils import atomic_write_text
from surfad.verdict import NG, OK, REVIEW, VERDICTS

REPORT_NAME = "report.html"
GALLERY_NAME = "index.html"  # surfad predict's page of a batch
WORST_K = 6  # images shown per class in the worst-cases section
RECORD_KEYS = ("path", "label", "score", "verdict", "defect_type")
GOOD_COLOR, DEFECT_COLOR, POINT_COLOR = "#2b7bba", "#d7301f", "#111111"

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
.plots img { max-width: 100%; margin-right: 1em; }
.note { background: #fff6dd; border-left: 4px solid #e0b000; padding: 0.5em 0.8em; }
.cards { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
.card { border: 1px solid #ccc; border-radius: 4px; padding: 0.5em; width: 240px; font-size: 0.85em;
        overflow-wrap: anywhere; }
.card img { width: 100%; display: block; margin-bottom: 0.4em; }
.pair { display: flex; gap: 0.4em; margin-top: 0.4em; }
.pair figure { margin: 0; flex: 1; min-width: 0; }
.pair img { width: 100%; image-rendering: pixelated; margin-bottom: 0.1em; }
.pair figcaption { font-size: 0.85em; color: #555; }
.wrong { color: #b00020; font-weight: bold; }
.muted { color: #777; }
"""


def check_records(records: list[dict[str, Any]]) -> None:
    """Raise SurfadError naming the record and key when a record lacks a field or has a bad one."""
    for i, record in enumerate(records):
        missing = [key for key in RECORD_KEYS if key not in record]
        if missing:
            raise SurfadError(f"records[{i}]: missing key(s) {', '.join(missing)}")
        if record["label"] not in (0, 1):
            raise SurfadError(f"records[{i}].label: expected 0 (good) or 1 (defect), got {record['label']!r}")
        if not isinstance(record["score"], (int, float, np.number)) or not math.isfinite(record["score"]):
            raise SurfadError(f"records[{i}].score: expected a finite number, got {record['score']!r}")


def worst_cases(records: list[dict[str, Any]], k: int = WORST_K) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The k good images with the highest scores and the k defects with the lowest scores.

    These are the report's worst false positives / false negatives (or, when the threshold
    separates them, the closest calls); callers make overlays for exactly these records.
    """
    good = sorted((r for r in records if r["label"] == 0), key=lambda r: -r["score"])
    defect = sorted((r for r in records if r["label"] == 1), key=lambda r: r["score"])
    return good[:k], defect[:k]


def write_report(
    out_dir: Path, records: list[dict[str, Any]], metrics: dict[str, float], title: str,
    overlays: dict[str, bytes] | None = None, history: list[dict[str, Any]] | None = None,
    explained: dict[str, list[tuple[dict[str, Any], bytes, bytes]]] | None = None,
) -> Path:
    """Write out_dir/report.html (atomically) and return its path.

    records: one per image with path, label (0 good / 1 defect), score, verdict (OK/REVIEW/NG) and
    defect_type. metrics: from surfad.metrics.image_metrics (plus pixel metrics if any); its
    "threshold" is the operating point (NG iff score > threshold). overlays: PNG bytes by record
    path for the images of :func:`worst_cases`; records without one are listed without image.
    history: the run's training history rows (history.csv), drawn as its training curves.
    explained: by record path, (region dict, its crop PNG, its nearest good example's crop PNG) for the
    worst cases' regions that have one, shown side by side.
    Degenerate data (one class only, no images) gives a page that says what cannot be shown.
    """
    check_records(records)
    if "threshold" not in metrics:
        raise SurfadError("metrics: missing 'threshold' (the operating point the report shows)")
    threshold = float(metrics["threshold"])
    scores = np.array([float(r["score"]) for r in records])
    labels = np.array([int(r["label"]) for r in records])
    n_defect = int(labels.sum())
    n_good = labels.size - n_defect

    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="muted">{labels.size} images ({n_good} good, {n_defect} defective); '
        f"{_rule_text(threshold, metrics.get('review_band'))}.</p>",
        *_headline(scores, labels, threshold, metrics),
        "<h2>Metrics</h2>",
        _table(["metric", "value"], [[html.escape(str(k)), _fmt(v)] for k, v in metrics.items() if not isinstance(v, dict)]),
    ]
    if labels.size == 0:
        parts.append('<p class="note">No images were evaluated: nothing to plot.</p>')
    else:
        parts += _score_sections(scores, labels, threshold, metrics)
    parts += _worst_section(records, overlays or {}, explained or {})
    parts += ["<h2>Per defect type</h2>", _per_type_table(records, metrics.get("per_type_image_auroc", {}))]
    if history:
        parts += ["<h2>Training</h2>", '<div class="plots">' + _img(history_plot(history), "Training curves") + "</div>"]
    parts.append(f'<p class="muted">Generated by surfad {__version__}.</p>')

    path = Path(out_dir) / REPORT_NAME
    atomic_write_text(path, _page(title, parts))
    return path


def write_gallery(out_dir: Path, records: list[dict[str, Any]]) -> Path:
    """Write out_dir/index.html for a batch of predictions and return its path.

    records: predictions.jsonl lines (path, score, threshold, verdict, regions, overlay, and crops when
    regions have nearest good examples). The page shows REVIEW images first (a person decides them),
    then NG, then OK ones, each by falling score (the most doubtful OK images come first), as overlay
    thumbnails linked to the overlay files, each explained region's crop beside its nearest good
    example's.
    Links are relative to out_dir, so the folder can be moved or archived whole.
    """
    out_dir = Path(out_dir)
    groups = {v: sorted((r for r in records if r["verdict"] == v), key=lambda r: -float(r["score"])) for v in VERDICTS}
    title = f"surfad predictions: {len(records)} images, {len(groups[NG])} NG" + (
        f", {len(groups[REVIEW])} to review" if groups[REVIEW] else "")
    parts = [f"<h1>{html.escape(title)}</h1>",
             ('<p class="muted">Overlays show the anomaly map and the defect regions; click one for the full size. '
              "Every figure is also in predictions.csv.</p>")]
    headings = [(f"REVIEW ({len(groups[REVIEW])}): for a person to decide", REVIEW)] if groups[REVIEW] else []
    headings += [(f"NG ({len(groups[NG])})", NG), (f"OK ({len(groups[OK])}), most doubtful first", OK)]
    for heading, key in headings:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        cards = [_card(r, out_dir) for r in groups[key]]
        parts.append('<div class="cards">' + "".join(cards) + "</div>" if cards else '<p class="muted">None.</p>')
    parts.append(f'<p class="muted">Generated by surfad {__version__}.</p>')
    path = out_dir / GALLERY_NAME
    atomic_write_text(path, _page(title, parts))
    return path


def _card(record: dict[str, Any], out_dir: Path) -> str:
    """One thumbnail of the gallery: the overlay, linked, with the path, score and regions, and each
    explained region's crop beside its nearest good example's."""
    link = _relative(record["overlay"], out_dir)
    decided = f"review band {_fmt(record['review'][0])} to {_fmt(record['review'][1])}" if record.get("review") else \
        f"threshold {_fmt(float(record['threshold']))}"
    pairs = [_pair(n, region, _relative(crop["region"], out_dir), _relative(crop["nearest_good"], out_dir))
             for n, (region, crop) in enumerate(zip(record["regions"], record.get("crops") or []), 1) if crop]
    return (f'<div class="card"><a href="{link}"><img loading="lazy" alt="overlay" src="{link}"></a>'
            f"<div>{html.escape(str(record['path']))}</div>"
            f"<div>score {_fmt(float(record['score']))} ({decided}) &middot; {len(record['regions'])} region(s)</div>"
            + "".join(pairs) + "</div>")


def _relative(path: str, out_dir: Path) -> str:
    """A file's link from a page in out_dir, escaped for an attribute."""
    return html.escape(quote(Path(os.path.relpath(path, out_dir)).as_posix()), quote=True)


def _pair(n: int, region: dict[str, Any], region_src: str, good_src: str) -> str:
    """Region n's crop beside its nearest good example's (both image sources given escaped), captioned."""
    good = region["nearest_good"]
    flag = " (map peak, below the pixel threshold)" if region.get("below_pixel_threshold") else ""
    return (f'<div class="pair"><figure><img loading="lazy" alt="region {n}" src="{region_src}">'
            f"<figcaption>region {n}{flag}</figcaption></figure>"
            f'<figure><img loading="lazy" alt="nearest good example of region {n}" src="{good_src}">'
            f"<figcaption>nearest good: {html.escape(good['image'])} {good['box']} "
            f"(distance {_fmt(float(good['distance']))})</figcaption></figure></div>")


def _page(title: str, parts: list[str]) -> str:
    """A complete HTML page with the report style."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(parts)
        + "\n</body>\n</html>\n"
    )


def _fmt(value: Any) -> str:
    """Numbers for tables: ints as is, floats with 4 significant digits, NaN as n/a."""
    if isinstance(value, (bool, np.bool_)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(value)
    if isinstance(value, (float, np.floating)):
        return "n/a" if math.isnan(value) else f"{value:.4g}"
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[str]]) -> str:
    """An HTML table from already escaped/formatted cells."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="{_data_uri(png)}">'


def _data_uri(png: bytes) -> str:
    return f"data:image/png;base64,{base64.b64encode(png).decode('ascii')}"


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)  # Figure without pyplot renders with Agg
    return buffer.getvalue()


def history_plot(rows: list[dict[str, Any]]) -> bytes:
    """PNG of a run's history rows (history.csv): each loss term per epoch (log scale) on the left,
    the validation figures on the right, the shipped epoch (the last marked best) as a dashed line."""
    epochs = [int(r["epoch"]) for r in rows]
    losses = [k for k in rows[0] if k not in ("epoch", "lr", "seconds", "best", "best_seg") and not k.startswith("val_")]
    figures = [k for k in ("val_auroc", "val_ap", "val_pixel_auroc", "val_aupro") if any(k in r for r in rows)]
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    for key in losses:
        left.plot(epochs, [max(float(r[key]), 1e-8) for r in rows], marker=".", label=key)
    left.set(yscale="log", xlabel="epoch", title="training losses (epoch means)")
    for key in figures:
        points = [(e, float(r[key])) for e, r in zip(epochs, rows) if r.get(key) not in (None, "")]
        right.plot(*zip(*points), marker=".", label=key)
    right.set(xlabel="epoch", ylim=(-0.02, 1.02), title="validation")
    shipped = shipped_row(rows)
    for ax in (left, right):
        if shipped is not None:
            ax.axvline(int(shipped["epoch"]), ls="--", color=POINT_COLOR, lw=1, label=f"shipped (epoch {shipped['epoch']})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return _png(fig)


def _operating_point(scores: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[float, float, float]:
    """(FPR, recall, precision) at threshold; precision is nan with no NG verdict."""
    rates = rates_at(scores, labels, threshold)
    return rates["fpr"], rates["recall"], rates["precision"]


def _unit_square_plot(draw: Callable[[Any], None], title: str, xlabel: str, ylabel: str, legend: str) -> bytes:
    """A curve on [0, 1] x [0, 1] (ROC, PR) as PNG bytes: `draw(ax)` adds the lines."""
    fig = Figure(figsize=(5, 4.4), layout="constrained")
    ax = fig.add_subplot()
    draw(ax)
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc=legend)
    return _png(fig)


def _roc_plot(scores: np.ndarray, labels: np.ndarray, threshold: float) -> bytes:
    fpr, tpr, _ = roc_curve(labels, scores)
    op_fpr, op_tpr, _ = _operating_point(scores, labels, threshold)

    def draw(ax: Any) -> None:
        ax.plot([0, 1], [0, 1], ls=":", color="#999999", label="chance")
        ax.plot(fpr, tpr, color=DEFECT_COLOR, lw=2, label="ROC")
        ax.plot(op_fpr, op_tpr, "o", ms=9, color=POINT_COLOR,
                label=f"threshold {threshold:.4g}\n(FPR {op_fpr:.3f}, recall {op_tpr:.3f})")

    return _unit_square_plot(draw, "ROC curve", "false-positive rate (good called NG)", "recall (defects called NG)",
                             "lower right")


def _pr_plot(scores: np.ndarray, labels: np.ndarray, threshold: float) -> bytes:
    precision, recall, _ = precision_recall_curve(labels, scores)
    _, op_recall, op_precision = _operating_point(scores, labels, threshold)

    def draw(ax: Any) -> None:
        ax.axhline(labels.mean(), ls=":", color="#999999", label="chance (defect share)")
        ax.step(recall, precision, where="post", color=DEFECT_COLOR, lw=2, label="PR")
        if math.isnan(op_precision):
            ax.plot([], [], " ", label=f"threshold {threshold:.4g}: nothing NG")
        else:
            ax.plot(op_recall, op_precision, "o", ms=9, color=POINT_COLOR,
                    label=f"threshold {threshold:.4g}\n(recall {op_recall:.3f}, precision {op_precision:.3f})")

    return _unit_square_plot(draw, "Precision-recall curve", "recall (defects called NG)",
                             "precision (NG that are defects)", "lower left")


def _histogram(scores: np.ndarray, labels: np.ndarray, threshold: float, band: list[float] | None = None) -> bytes:
    """Score histograms per class with the threshold, or the review band's two thresholds (shaded between)."""
    marks = [threshold] if band is None else list(band)
    edges = np.histogram_bin_edges(np.append(scores, marks), bins=min(50, max(10, scores.size // 4)))
    fig = Figure(figsize=(8, 3.8), layout="constrained")
    ax = fig.add_subplot()
    for label, name, color in ((0, "good", GOOD_COLOR), (1, "defect", DEFECT_COLOR)):
        part = scores[labels == label]
        if part.size:
            ax.hist(part, bins=edges, color=color, alpha=0.55, label=f"{name} ({part.size})")
    if band is None:
        ax.axvline(threshold, color=POINT_COLOR, ls="--", lw=2, label=f"threshold {threshold:.4g}")
        ax.set(xlabel="image score (NG if > threshold)", ylabel="images", title="Score distribution per class")
    else:
        ax.axvspan(band[0], band[1], color=POINT_COLOR, alpha=0.12, label="REVIEW")
        for value, name in zip(band, ("low", "high")):
            ax.axvline(value, color=POINT_COLOR, ls="--", lw=2, label=f"{name} {value:.4g}")
        ax.set(xlabel="image score (OK if <= low, NG if > high, REVIEW between)", ylabel="images",
               title="Score distribution per class, with the review band")
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    return _png(fig)


def _score_sections(scores: np.ndarray, labels: np.ndarray, threshold: float, metrics: dict[str, Any]) -> list[str]:
    """The curves, the threshold trade-offs, the score histograms and the review band's outcome."""
    parts = ["<h2>ROC and precision-recall curves</h2>"]
    if labels.any() and not labels.all():
        parts.append('<div class="plots">' + _img(_roc_plot(scores, labels, threshold), "ROC curve")
                     + _img(_pr_plot(scores, labels, threshold), "Precision-recall curve") + "</div>")
    else:
        only = "good" if not labels.any() else "defective"
        parts.append(f'<p class="note">ROC and PR curves need both good and defective images; this set has only '
                     f"{only} images.</p>")
    if metrics.get("trade_offs"):
        parts += _trade_off_section(metrics)
    band = metrics.get("review_band")
    parts += ["<h2>Score distributions</h2>",
              '<div class="plots">' + _img(_histogram(scores, labels, threshold, band and [band["low"], band["high"]]),
                                           "Score histograms") + "</div>"]
    return parts + (_review_section(band) if band else [])


def _headline(scores: np.ndarray, labels: np.ndarray, threshold: float, metrics: dict[str, Any]) -> list[str]:
    """AUROC beside what the threshold the run judges with does: the defects it catches, the false alarms."""
    if not (labels.any() and not labels.all()):
        return []
    caught, alarms = int((scores[labels == 1] > threshold).sum()), int((scores[labels == 0] > threshold).sum())
    strategy = metrics.get("threshold_strategy")
    rule = f" ({html.escape(str(strategy))})" if strategy else ""
    return [f"<p><b>image AUROC {_fmt(metrics.get('image_auroc', math.nan))}; at the threshold{rule}: recall "
            f"{_fmt(caught / labels.sum())} ({caught} of {int(labels.sum())} defects NG), false alarms "
            f"{_fmt(alarms / (labels.size - labels.sum()))} ({alarms} of {int(labels.size - labels.sum())} good "
            "parts NG)</b></p>"]


def _review_section(band: dict[str, float]) -> list[str]:
    """What the review band gives on the evaluated images."""
    rows = [["sent to review", f"{_fmt(band['review_share'])} ({band['n_review']} images)"],
            ["escapes (defects called OK)", f"{_fmt(band['escapes'])} ({band['n_escapes']} images)"],
            ["false rejects (good called NG)", f"{_fmt(band['false_rejects'])} ({band['n_false_rejects']} images)"]]
    return [f"<h2>Review band: OK &le; {_fmt(band['low'])} &lt; REVIEW &le; {_fmt(band['high'])} &lt; NG</h2>",
            _table(["outcome", "share"], rows)]


def _rule_text(threshold: float, band: dict[str, Any] | None) -> str:
    """The verdict rule the records were judged by, in words."""
    if band is None:
        return f"verdict NG iff score &gt; {_fmt(threshold)}"
    return (f"verdict OK iff score &le; {_fmt(band['low'])}, NG iff score &gt; {_fmt(band['high'])}, "
            "REVIEW between")


def _outcome(record: dict[str, Any]) -> tuple[str, bool]:
    """What the record's verdict was for its label, and whether it was wrong (REVIEW is not)."""
    if record["verdict"] == REVIEW:
        return "sent to review", False
    if (record["verdict"] == NG) != (int(record["label"]) == 1):
        return ("false positive" if int(record["label"]) == 0 else "false negative"), True
    return "correct", False


def _worst_section(records: list[dict[str, Any]], overlays: dict[str, bytes],
                   explained: dict[str, list[tuple[dict[str, Any], bytes, bytes]]]) -> list[str]:
    worst_good, worst_defect = worst_cases(records)
    parts = ["<h2>Worst cases</h2>"]
    if explained:
        parts.append('<p class="muted">Beside each region: the place in a kept training image that looks most '
                     "like it (its nearest good example). For an image inspected as OK, the map's peak is "
                     "shown.</p>")
    for heading, chosen, empty in (
        ("Highest-scoring good images (false positives when above the threshold)", worst_good, "No good images."),
        ("Lowest-scoring defective images (false negatives when not above the threshold)", worst_defect,
         "No defective images."),
    ):
        parts.append(f"<h3>{heading}</h3>")
        if not chosen:
            parts.append(f'<p class="muted">{empty}</p>')
            continue
        cards = []
        for r in chosen:
            outcome, wrong = _outcome(r)
            image = _img(overlays[r["path"]], f"overlay of {r['path']}") if r["path"] in overlays else ""
            pairs = [_pair(n, region, _data_uri(crop), _data_uri(good))
                     for n, (region, crop, good) in enumerate(explained.get(r["path"], []), 1)]
            cards.append(
                f'<div class="card">{image}<div>{html.escape(str(r["path"]))}</div>'
                f"<div>score {_fmt(float(r['score']))} &middot; verdict {html.escape(str(r['verdict']))}"
                f" &middot; type {html.escape(str(r['defect_type']))}</div>"
                f'<div class="{"wrong" if wrong else "muted"}">{outcome}</div>' + "".join(pairs) + "</div>"
            )
        parts.append('<div class="cards">' + "".join(cards) + "</div>")
    return parts


def _trade_off_section(metrics: dict[str, Any]) -> list[str]:
    """The run's threshold and each calibration rule's, with what they give on this split."""
    columns = ("threshold", "fpr", "recall", "precision")
    rows = [["this report's threshold"] + [_fmt(metrics.get(c, math.nan)) for c in columns]]
    rows += [[html.escape(rule)] + [_fmt(figures[c]) for c in columns] for rule, figures in metrics["trade_offs"].items()]
    return [
        "<h2>Thresholds by calibration rule</h2>",
        ('<p class="muted">What each <code>surfad calibrate --strategy</code> rule would choose on this split, and '
         "the false-positive rate (good images called NG), recall (defects called NG) and precision it gives here. "
         "They are read off the images they were chosen on: to adopt a rule, calibrate it on other images than "
         "those you measure on (for example <code>--split val</code>).</p>"),
        _table(["rule", "threshold", "FPR", "recall", "precision"], rows),
    ]


def _per_type_table(records: list[dict[str, Any]], auroc: dict[str, float]) -> str:
    """Score statistics per (class, type); `auroc` is metrics' per_type_image_auroc (may be empty)."""
    groups: dict[tuple[int, str], list[float]] = {}
    ng: dict[tuple[int, str], list[bool]] = {}
    for r in records:
        key = (int(r["label"]), str(r["defect_type"]))
        groups.setdefault(key, []).append(float(r["score"]))
        ng.setdefault(key, []).append(r["verdict"] == NG)
    if not groups:
        return '<p class="muted">No images.</p>'
    rows = []
    for (label, name), values in sorted(groups.items()):
        s, called_ng = np.array(values), ng[label, name]
        rows.append([
            html.escape(name), "defect" if label else "good", str(s.size), _fmt(float(s.mean())),
            _fmt(float(s.min())), _fmt(float(s.max())), _fmt(float(np.mean(called_ng))),
            _fmt(auroc[name]) if label and name in auroc else "",
        ])
    note = (
        '<p class="muted">NG share = share with the verdict NG: the recall for defect types, '
        "the false-positive rate for good images. AUROC: that defect type against all good images.</p>"
    )
    return _table(["type", "class", "count", "mean score", "min", "max", "NG share", "AUROC"], rows) + note


def leaderboard_page(rows: list[dict[str, Any]], budget_min: float, seconds: float) -> str:
    """The page of `surfad train --model auto`: the leaderboard's rows (best first) as a table, and
    validation AUROC against inference cost as a plot."""
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for row in rows:
        if math.isfinite(row["val_auroc"]):
            colour = "#d7301f" if row["shipped"] else "#2b7bba"
            ax.scatter(row["inference_ms"], row["val_auroc"], color=colour, marker="*" if row["members"] else "o")
            ax.annotate(row["name"], (row["inference_ms"], row["val_auroc"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.set_xlabel("inference ms per image (torch, one at a time)")
    ax.set_ylabel("validation image AUROC")
    ax.set_title("candidates (shipped in red, fused pairs as stars)")
    fig.tight_layout()
    header = ["candidate", "model", "settings", "val AUROC", "val AP", "val AUPRO", "seconds", "ms / image", "shipped"]
    cells = [[html.escape(r["name"]), html.escape(r["model"]), html.escape(r["settings"]),
              *(f"{r[k]:.4f}" if math.isfinite(r[k]) else "n/a" for k in ("val_auroc", "val_ap", "val_aupro")),
              f"{r['seconds']:.0f}", f"{r['inference_ms']:.1f}", "yes" if r["shipped"] else ""] for r in rows]
    return _page("surfad auto", [
        "<h1>surfad train --model auto</h1>",
        f"<p>{len(rows)} candidates in {seconds / 60:.1f} min (budget {budget_min:g} min), ranked on validation "
        "only (never test); the shipped one is this folder's detector.</p>",
        _table(header, cells), f'<div class="plots">{_img(_png(fig), "validation AUROC against cost")}</div>',
    ])
