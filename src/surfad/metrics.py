"""Detection metrics: image AUROC/AP/F1, pixel AUROC/AP and AUPRO.

Conventions shared by the whole project: label 1 = defect, 0 = good; higher scores are more
anomalous; the verdict is NG iff ``score > threshold`` (strictly greater). A metric that the data
cannot define (AUROC with one class, precision with no NG verdict, ...) is ``float("nan")``, never
an exception, so an evaluation with degenerate data still produces a report.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from surfad.errors import SurfadError
from surfad.verdict import flagged

NAN = float("nan")
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def check_scores(scores: object, name: str = "scores") -> np.ndarray:
    """1-D finite float array (float32 stays float32, everything else becomes float64)."""
    arr = np.asarray(scores)
    if arr.dtype != np.float32:
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise SurfadError(f"{name}: expected numbers, got dtype {arr.dtype}") from None
    if arr.ndim != 1:
        raise SurfadError(f"{name}: expected a 1-D array of per-image scores, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise SurfadError(f"{name}: contains NaN or infinite values")
    return arr


def check_labels(labels: object, n: int, name: str = "labels") -> np.ndarray:
    """1-D bool array of length n from 0/1 (or bool) labels."""
    arr = np.asarray(labels)
    if arr.shape != (n,):
        raise SurfadError(f"{name}: expected shape ({n},), one label per image, got {arr.shape}")
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise SurfadError(f"{name}: expected only 0 (good) and 1 (defect), got {np.unique(arr)[:5].tolist()}")
    return arr.astype(bool)


def _split_points(values: np.ndarray) -> np.ndarray:
    """For distinct scores in descending order, a threshold just below each one.

    Threshold i lies midway between values[i] and the next lower value, so ``score > threshold``
    counts exactly the scores >= values[i]; below the smallest value the last gap is mirrored
    (0.5 below it when there is a single value). Computed in the scores' dtype so the same holds
    when callers compare float32 scores with the threshold.
    """
    if values.size > 1:
        lower = np.append(values[1:], values[-1] - (values[-2] - values[-1]))
    else:
        lower = values - values.dtype.type(1)
    mid = (lower + (values - lower) / 2).astype(values.dtype)
    # Adjacent floats have no midpoint: fall back to the float just below the value.
    return np.where(mid < values, mid, np.nextafter(values, values.dtype.type(-np.inf)))


def operating_points(scores: object, labels: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every distinct way a threshold can split the images, from no NG verdict to all NG.

    Parameters
    ----------
    scores : array-like of shape (n,)
        Image anomaly scores, higher = more anomalous.
    labels : array-like of shape (n,)
        1 for defect, 0 for good.

    Returns
    -------
    thresholds : ndarray of shape (m + 1,)
        Decreasing thresholds for the rule NG iff ``score > threshold``. ``thresholds[0]`` is the
        highest score (nothing is NG); the others lie midway between adjacent distinct scores,
        and the last one below the lowest score (everything is NG).
    tp : ndarray of shape (m + 1,)
        Number of defects with ``score > thresholds[i]``.
    fp : ndarray of shape (m + 1,)
        Number of good images with ``score > thresholds[i]``.
    """
    s = check_scores(scores)
    y = check_labels(labels, s.size)
    if s.size == 0:
        raise SurfadError("scores: no images given")
    order = np.argsort(s, kind="stable")[::-1]
    s, y = s[order], y[order]
    tp_cum = np.cumsum(y)
    fp_cum = np.arange(1, s.size + 1) - tp_cum
    ends = np.append(np.flatnonzero(s[1:] != s[:-1]), s.size - 1)  # last index of each tie group
    values = s[ends]
    thresholds = np.concatenate([values[:1], _split_points(values)])
    return thresholds, np.append(0, tp_cum[ends]), np.append(0, fp_cum[ends])


def f1_max(scores: object, labels: object) -> tuple[float, float]:
    """Best F1 score over all thresholds, and a threshold that reaches it.

    Parameters
    ----------
    scores : array-like of shape (n,)
        Image anomaly scores, higher = more anomalous.
    labels : array-like of shape (n,)
        1 for defect, 0 for good.

    Returns
    -------
    f1 : float
        The maximum F1 of the defect class over all thresholds; nan without defects.
    threshold : float
        A threshold for which NG iff ``score > threshold`` gives that F1: midway between the
        lowest score called NG and the next lower score (see :func:`operating_points`). Among
        equally good thresholds, the highest one. nan without defects.
    """
    s = check_scores(scores)
    y = check_labels(labels, s.size)
    n_defect = int(y.sum())
    if n_defect == 0:
        return NAN, NAN
    thresholds, tp, fp = operating_points(s, y)
    f1 = 2 * tp / (tp + fp + n_defect)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def rates_at(scores: object, labels: object, threshold: float) -> dict[str, float]:
    """What the rule NG iff ``score > threshold`` gives on labelled images.

    Parameters
    ----------
    scores : array-like of shape (n,)
        Image anomaly scores, higher = more anomalous.
    labels : array-like of shape (n,)
        1 for defect, 0 for good.
    threshold : float
        Operating threshold.

    Returns
    -------
    rates : dict
        ``accuracy`` (nan without images), ``precision`` (nan with no NG verdict), ``recall``
        (nan without defects) and ``fpr`` (share of good images called NG; nan without good images).
    """
    s = check_scores(scores)
    y = check_labels(labels, s.size)
    n_defect = int(y.sum())
    n_good = int(s.size - n_defect)
    ng = flagged(s, threshold)
    tp = int((ng & y).sum())
    fp = int((ng & ~y).sum())
    return {
        "accuracy": (tp + n_good - fp) / s.size if s.size else NAN,
        "precision": tp / (tp + fp) if tp + fp else NAN,
        "recall": tp / n_defect if n_defect else NAN,
        "fpr": fp / n_good if n_good else NAN,
    }


def band_rates(scores: object, labels: object, low: float, high: float) -> dict[str, float]:
    """What an OK / REVIEW / NG band gives on labelled images (OK iff score <= low, NG iff score > high).

    Returns
    -------
    rates : dict
        ``review_share`` (share of all images sent to a person), ``escapes`` (share of the defects
        called OK, nan without defects), ``false_rejects`` (share of the good images called NG, nan
        without good images), and the counts ``n_review``, ``n_escapes``, ``n_false_rejects``.
    """
    s = check_scores(scores)
    y = check_labels(labels, s.size)
    ok, ng = s <= low, flagged(s, high)
    n_defect, n_good = int(y.sum()), int((~y).sum())
    escapes, false_rejects = int((ok & y).sum()), int((ng & ~y).sum())
    n_review = int((~ok & ~ng).sum())
    return {
        "low": float(low), "high": float(high),
        "review_share": n_review / s.size if s.size else NAN,
        "escapes": escapes / n_defect if n_defect else NAN,
        "false_rejects": false_rejects / n_good if n_good else NAN,
        "n_review": n_review, "n_escapes": escapes, "n_false_rejects": false_rejects,
    }


def image_metrics(scores: object, labels: object, threshold: float) -> dict[str, float]:
    """Image-level metrics of scores against labels, threshold-free and at `threshold`.

    Parameters
    ----------
    scores : array-like of shape (n,)
        Image anomaly scores, higher = more anomalous.
    labels : array-like of shape (n,)
        1 for defect, 0 for good.
    threshold : float
        Operating threshold: NG iff ``score > threshold``.

    Returns
    -------
    metrics : dict
        ``image_auroc`` (nan unless both classes are present), ``image_ap`` (average precision;
        nan without defects), ``image_f1_max`` (best F1 over all thresholds; nan without defects),
        ``threshold``, and at that threshold ``accuracy``, ``precision`` (nan with no NG verdict),
        ``recall`` (nan without defects), ``fpr`` (share of good images called NG; nan without good
        images), plus the counts ``n_good`` and ``n_defect`` (ints).
    """
    s = check_scores(scores)
    y = check_labels(labels, s.size)
    n_defect = int(y.sum())
    n_good = int(s.size - n_defect)
    return {
        "image_auroc": float(roc_auc_score(y, s)) if n_good and n_defect else NAN,
        "image_ap": float(average_precision_score(y, s)) if n_defect else NAN,
        "image_f1_max": f1_max(s, y)[0],
        "threshold": float(threshold),
        **rates_at(s, y, threshold),
        "n_good": n_good,
        "n_defect": n_defect,
    }


def per_type_auroc(scores: object, labels: object, types: list[str]) -> dict[str, float]:
    """Image AUROC of each defect type against all good images: which defects a model misses.

    Parameters
    ----------
    scores : array-like of shape (n,)
        Image anomaly scores, higher = more anomalous.
    labels : array-like of shape (n,)
        1 for defect, 0 for good.
    types : list of str, length n
        Defect type of each image (ignored for good images).

    Returns
    -------
    auroc : dict
        ``{type: AUROC of that type's defect images vs every good image}``, types sorted by name;
        empty when there are no good images.
    """
    s = check_scores(scores)
    y = check_labels(labels, s.size)
    if len(types) != s.size:
        raise ValueError(f"types: expected {s.size} entries, got {len(types)}")
    good = s[~y]
    if good.size == 0:
        return {}
    names = sorted({t for t, is_defect in zip(types, y) if is_defect})
    result = {}
    for name in names:
        defect = s[y & (np.asarray(types, dtype=object) == name)]
        truth = np.r_[np.zeros(good.size), np.ones(defect.size)]
        result[name] = float(roc_auc_score(truth, np.r_[good, defect]))
    return result


def _as_2d_list(arrays: object, name: str) -> list[np.ndarray]:
    """List of 2-D arrays from an (N, H, W) array or a list of HxW arrays."""
    items = [np.asarray(a) for a in arrays] if isinstance(arrays, Sequence) else list(np.asarray(arrays))
    for i, a in enumerate(items):
        if a.ndim != 2:
            raise SurfadError(f"{name}[{i}]: expected a 2-D (H, W) array, got shape {a.shape}")
    return items


def check_maps(maps: object) -> list[np.ndarray]:
    """List of finite 2-D float anomaly maps (float dtypes kept) from (N, H, W) or a list of HxW."""
    map_list = [m if np.issubdtype(m.dtype, np.floating) else m.astype(np.float64) for m in _as_2d_list(maps, "maps")]
    for i, m in enumerate(map_list):
        if not np.isfinite(m).all():
            raise SurfadError(f"maps[{i}]: contains NaN or infinite values")
    return map_list


def check_maps_masks(maps: object, masks: object) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Lists of 2-D float maps and bool masks (nonzero = defect) of the same shapes."""
    map_list = check_maps(maps)
    mask_list = [k.astype(bool, copy=False) for k in _as_2d_list(masks, "masks")]
    if len(map_list) != len(mask_list):
        raise SurfadError(f"masks: got {len(mask_list)} masks for {len(map_list)} anomaly maps")
    for i, (m, k) in enumerate(zip(map_list, mask_list)):
        if m.shape != k.shape:
            raise SurfadError(f"masks[{i}]: shape {k.shape} differs from its anomaly map's {m.shape}")
    return map_list, mask_list


def pixel_metrics(
    maps: object, masks: object, max_pixels: int | None = 2_000_000, seed: int = 0, valid: np.ndarray | None = None
) -> dict[str, float]:
    """Pixel-level AUROC and average precision over all pixels of all images, and AUPRO.

    Parameters
    ----------
    maps : array of shape (N, H, W) or list of HxW arrays
        Anomaly maps, higher = more anomalous.
    masks : array of shape (N, H, W) or list of HxW arrays
        Ground-truth defect masks (nonzero = defect), same shapes as `maps`.
    max_pixels : int or None, default=2_000_000
        AUROC and AP use a uniform random subsample (without replacement) of this many pixels
        when there are more, which keeps memory and time bounded on large test sets with a
        negligible effect on the values. None uses every pixel. AUPRO always uses every pixel.
    seed : int, default=0
        Seed of the subsample, so results are reproducible.
    valid : bool array of shape (H, W) or None, default=None
        A region of interest: only its pixels count (defect pixels outside it are ignored, and so
        is the background there). None: every pixel.

    Returns
    -------
    metrics : dict
        ``pixel_auroc`` and ``pixel_ap`` (nan unless the masks have both defect and background
        pixels) and ``aupro`` (see :func:`aupro`; with `valid`, regions are cut to it).
    """
    map_list, mask_list = check_maps_masks(maps, masks)
    if not map_list:
        return {"pixel_auroc": NAN, "pixel_ap": NAN, "aupro": NAN}
    if valid is not None:
        mask_list = [k & valid for k in mask_list]  # defect regions cut to the region of interest
    values = np.concatenate([m.ravel() if valid is None else m[valid] for m in map_list])
    truth = np.concatenate([k.ravel() if valid is None else k[valid] for k in mask_list])
    if max_pixels is not None and values.size > max_pixels:
        keep = np.random.default_rng(seed).choice(values.size, size=max_pixels, replace=False)
        values, truth = values[keep], truth[keep]
    both = bool(truth.any()) and not truth.all()
    return {
        "pixel_auroc": float(roc_auc_score(truth, values)) if both else NAN,
        "pixel_ap": float(average_precision_score(truth, values)) if both else NAN,
        "aupro": aupro(map_list, mask_list, background=valid),
    }


def aupro(maps: object, masks: object, fpr_limit: float = 0.3, num_thresholds: int | None = None,
          background: np.ndarray | None = None) -> float:
    """Normalised area under the per-region-overlap (PRO) curve up to a false-positive rate.

    Regions are the 8-connected components of each ground-truth mask. At threshold t,
    PRO(t) is the mean over all regions of all images of |region ∩ {map > t}| / |region| (every
    region counts equally, whatever its size), and FPR(t) = |{map > t} ∩ background| / |background|
    over all images. PRO is integrated over FPR from 0 to `fpr_limit` with the trapezoid rule,
    interpolating PRO linearly at exactly `fpr_limit`, and divided by `fpr_limit` (the MVTec AD
    convention), so a perfect map gives 1.0 and a constant map gives ``fpr_limit / 2``.

    Parameters
    ----------
    maps : array of shape (N, H, W) or list of HxW arrays
        Anomaly maps, higher = more anomalous.
    masks : array of shape (N, H, W) or list of HxW arrays
        Ground-truth defect masks (nonzero = defect).
    fpr_limit : float, default=0.3
        Upper FPR integration limit, in (0, 1].
    num_thresholds : int or None, default=None
        None: the exact curve over every distinct map value. An int: that many evenly spaced
        thresholds between the lowest and highest map value (faster, approximate).
    background : bool array of shape (H, W) or None, default=None
        Where background pixels count for FPR (a region of interest); None: everywhere.

    Returns
    -------
    aupro : float
        In [0, 1]; nan when there is no defect region or no background pixel.
    """
    if not 0 < fpr_limit <= 1:
        raise SurfadError(f"fpr_limit: must be in (0, 1], got {fpr_limit}")
    if num_thresholds is not None and num_thresholds < 2:
        raise SurfadError(f"num_thresholds: must be at least 2 (or None for exact), got {num_thresholds}")
    map_list, mask_list = check_maps_masks(maps, masks)
    defect, inv_size = [], []
    n_regions = 0
    outside = []
    for m, k in zip(map_list, mask_list):
        outside.append(m[~k] if background is None else m[~k & background])
        regions, count = ndimage.label(k, structure=_EIGHT_CONNECTED)
        if count:
            ids = regions[k]
            defect.append(m[k])
            inv_size.append(1.0 / np.bincount(ids)[ids])
            n_regions += count
    bg = np.concatenate(outside) if outside else np.empty(0)
    if n_regions == 0 or bg.size == 0:
        return NAN
    values = np.concatenate(defect)
    weights = np.concatenate(inv_size) / n_regions  # each region's pixels sum to 1 / n_regions
    if num_thresholds is None:
        fpr, pro = _pro_curve_exact(bg, values, weights)
    else:
        fpr, pro = _pro_curve_binned(bg, values, weights, num_thresholds)
    return _normalised_area(fpr, pro, fpr_limit)


def _pro_curve_exact(bg: np.ndarray, values: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) polyline through every distinct map value, in order of falling threshold; sorts bg.

    PRO only changes at defect-pixel values, so only those need sorting with their weights; the
    background only needs counts, taken from one plain sort. For each distinct defect value v the
    curve has the point just above v (``map > v``) and just below it (``map >= v``); between them
    ties with background pixels make a diagonal segment, and between consecutive defect values
    only FPR moves, a horizontal segment that these two points bound exactly.
    """
    bg.sort()  # in place: the caller's concatenated copy
    order = np.argsort(values)[::-1]
    values, weights = values[order], weights[order]
    ends = np.append(np.flatnonzero(values[1:] != values[:-1]), values.size - 1)
    distinct = values[ends]
    pro_ge = np.cumsum(weights)[ends]
    pro_gt = np.append(0.0, pro_ge[:-1])
    fp_gt = bg.size - np.searchsorted(bg, distinct, side="right")
    fp_ge = bg.size - np.searchsorted(bg, distinct, side="left")
    fpr = np.concatenate([[0.0], np.column_stack([fp_gt, fp_ge]).ravel() / bg.size, [1.0]])
    pro = np.concatenate([[0.0], np.column_stack([pro_gt, pro_ge]).ravel(), [pro_ge[-1]]])
    return fpr, pro


def _pro_curve_binned(
    bg: np.ndarray, values: np.ndarray, weights: np.ndarray, num_thresholds: int
) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) at evenly spaced thresholds, from histograms (one linear pass, no sort)."""
    lo = float(min(bg.min(), values.min()))
    hi = float(max(bg.max(), values.max()))
    span = (lo, hi) if hi > lo else (lo, lo + 1.0)
    fp = np.histogram(bg, bins=num_thresholds, range=span)[0]
    tp = np.histogram(values, bins=num_thresholds, range=span, weights=weights)[0]
    # Reverse cumulative sums: the pixels at or above each bin's lower edge.
    fpr = np.concatenate([[0.0], np.cumsum(fp[::-1]) / bg.size])
    pro = np.concatenate([[0.0], np.cumsum(tp[::-1])])
    return fpr, pro


def _normalised_area(fpr: np.ndarray, pro: np.ndarray, limit: float) -> float:
    """Trapezoid area under pro(fpr) from 0 to limit (PRO interpolated at limit), / limit."""
    inside = int(np.searchsorted(fpr, limit, side="right"))
    x, y = fpr[:inside], pro[:inside]
    if inside < fpr.size:
        x0, x1, y0, y1 = fpr[inside - 1], fpr[inside], pro[inside - 1], pro[inside]
        x = np.append(x, limit)
        y = np.append(y, y0 + (y1 - y0) * (limit - x0) / (x1 - x0))
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2) / limit)
