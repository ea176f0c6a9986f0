"""The HTML report: sections, embedded images, well-formed markup, degenerate data."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from surfad.errors import SurfadError
from surfad.metrics import band_rates, image_metrics, per_type_auroc
from surfad.report import history_plot, worst_cases, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VOID = {"meta", "img", "br", "hr", "link", "input"}


class _Checker(HTMLParser):
    """Fails on mismatched tags; collects img sources."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs)["src"] or "")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()


def _parse(text: str) -> _Checker:
    assert text.startswith("<!DOCTYPE html>")
    checker = _Checker()
    checker.feed(text)
    checker.close()
    assert checker.stack == []
    return checker


def _records(n_good: int, n_defect: int, threshold: float) -> list[dict]:
    rng = np.random.default_rng(0)
    records = []
    for i in range(n_good + n_defect):
        label = int(i >= n_good)
        score = float(rng.normal(1.0 + 1.5 * label, 0.4))
        records.append({
            "path": f"img/{i:03d}<&>.png",
            "label": label,
            "score": score,
            "verdict": "NG" if score > threshold else "OK",
            "defect_type": ["scratch", "dent"][i % 2] if label else "good",
        })
    return records


def _metrics(records: list[dict], threshold: float) -> dict:
    return image_metrics([r["score"] for r in records], [r["label"] for r in records], threshold)


def test_report_normal_case(tmp_path: Path) -> None:
    records = _records(30, 12, threshold=1.8)
    per_type = per_type_auroc([r["score"] for r in records], [r["label"] for r in records],
                              [r["defect_type"] for r in records])
    metrics = {**_metrics(records, 1.8), "pixel_auroc": 0.9, "aupro": float("nan"), "per_type_image_auroc": per_type}
    fps, fns = worst_cases(records)
    assert len(fps) == len(fns) == 6
    assert [r["score"] for r in fps] == sorted((r["score"] for r in records if r["label"] == 0), reverse=True)[:6]
    tiny_png = PNG_SIGNATURE + b"not really a png"
    overlays = {fps[0]["path"]: tiny_png, fns[0]["path"]: tiny_png}

    path = write_report(tmp_path / "eval", records, metrics, "Eval <test>", overlays)
    assert path == tmp_path / "eval" / "report.html"
    text = path.read_text()
    checker = _parse(text)
    for section in ("Metrics", "ROC and precision-recall curves", "Score distributions", "Worst cases", "Per defect type"):
        assert f"<h2>{section}</h2>" in text
    assert "<title>Eval &lt;test&gt;</title>" in text  # escaped
    assert "image_auroc" in text and "pixel_auroc" in text and "n/a" in text
    assert f"<div>{fps[0]['path'].replace('<&>', '&lt;&amp;&gt;')}</div>" in text  # paths escaped
    assert "http://" not in text and "https://" not in text  # self-contained
    # ROC, PR, histogram and the two overlays, all embedded PNGs.
    assert len(checker.images) == 5
    for src in checker.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_SIGNATURE)
    assert re.search(r"<td>scratch</td><td>defect</td><td>6</td>", text)
    scratch = [r for r in records if r["defect_type"] == "scratch"]
    auroc = roc_auc_score([0] * 30 + [1] * len(scratch), [r["score"] for r in records if r["label"] == 0]
                          + [r["score"] for r in scratch])
    assert re.search(rf"<td>scratch</td><td>defect</td>(<td>[^<]*</td>){{5}}<td>{auroc:.4g}</td>", text)


def test_report_good_only_case(tmp_path: Path) -> None:
    records = _records(10, 0, threshold=2.0)
    path = write_report(tmp_path, records, _metrics(records, 2.0), "Good only")
    text = path.read_text()
    checker = _parse(text)
    assert "this set has only good images" in text
    assert "No defective images." in text
    assert len(checker.images) == 1  # the histogram only


def test_report_without_images_and_bad_records(tmp_path: Path) -> None:
    text = write_report(tmp_path, [], {"threshold": 1.0}, "Empty").read_text()
    _parse(text)
    assert "No images were evaluated" in text
    with pytest.raises(SurfadError, match="threshold"):
        write_report(tmp_path, [], {}, "No threshold")
    broken = _records(2, 1, threshold=1.0)
    del broken[1]["score"]
    with pytest.raises(SurfadError, match=r"records\[1\]: missing key\(s\) score"):
        write_report(tmp_path, broken, {"threshold": 1.0}, "Broken")


def test_history_plot_draws_losses_validation_and_the_shipped_epoch() -> None:
    """Epochs without validation (val_every > 1) and a zero loss term (KL warm-up) still plot."""
    rows = [
        {"epoch": 1, "lr": 1e-3, "loss": 0.9, "recon": 0.8, "kl": 0.0, "seconds": 1.0},
        {"epoch": 2, "lr": 1e-3, "loss": 0.5, "recon": 0.4, "kl": 0.1, "val_auroc": 0.7, "val_aupro": 0.4,
         "seconds": 2.0, "best": 1},
        {"epoch": 3, "lr": 1e-3, "loss": 0.4, "recon": 0.3, "kl": 0.1, "seconds": 3.0},
        {"epoch": 4, "lr": 1e-3, "loss": 0.3, "recon": 0.2, "kl": 0.1, "val_auroc": 0.6, "val_aupro": 0.5,
         "seconds": 4.0, "best_seg": 1},
    ]
    png = history_plot(rows)
    assert png.startswith(b"\x89PNG")
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape[1] > image.shape[0] > 200  # two panels side by side


def test_with_a_review_band_the_report_judges_by_the_records_verdicts(tmp_path: Path) -> None:
    """Before: worst cases and the NG share used the single threshold, so a good part sent to
    review read "false positive" and the header stated a rule the verdicts did not follow."""
    records = _records(30, 12, threshold=1.8)
    low, high = 1.2, 2.4
    for r in records:
        r["verdict"] = "NG" if r["score"] > high else "OK" if r["score"] <= low else "REVIEW"
    band = band_rates([r["score"] for r in records], [r["label"] for r in records], low, high)
    text = write_report(tmp_path / "eval", records, {**_metrics(records, 1.8), "review_band": band}, "band").read_text()
    assert "verdict OK iff score &le; 1.2, NG iff score &gt; 2.4, REVIEW between" in text
    fps, _ = worst_cases(records)
    reviewed = [r for r in fps if r["verdict"] == "REVIEW"]
    assert reviewed and text.count("sent to review") >= len(reviewed)
    good_ng = np.mean([r["verdict"] == "NG" for r in records if r["label"] == 0])
    assert re.search(rf"<td>good</td><td>good</td><td>30</td>(<td>[^<]*</td>){{3}}<td>{good_ng:.4g}</td>", text)
