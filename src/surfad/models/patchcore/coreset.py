"""Greedy k-centre coreset selection and nearest-neighbour distances, in chunks that bound memory.

The coreset is what keeps PatchCore's memory bank small: from N training patches it keeps the
`size` that cover all of them best, chosen greedily (Gonzalez's 2-approximation of k-centre).
Each step adds the patch farthest from those chosen so far, so every training patch ends within
the final covering radius of the bank and rare normal patches are kept before common ones.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

BOUND_MARGIN = 0.999  # a point is compared in full unless 0.999 x its bound reaches its nearest distance so far
AXES_CHUNK = 65536  # points per float64 chunk of the covariance of principal_axes
DENSE_SHARE = 8  # when more than 1 / 8 of the points are compared, one pass over all is faster than gathering them


def random_projection(dim_in: int, dim_out: int, seed: int = 0) -> torch.Tensor:
    """A (dim_in, dim_out) Gaussian projection scaled by 1 / sqrt(dim_out): it keeps distances
    within a small factor (Johnson-Lindenstrauss), which is all the selection needs."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(dim_in, dim_out, generator=generator) / math.sqrt(dim_out)


def coreset_seconds(n: int, dim: int, size: int, timed_steps: int = 16) -> float:
    """Seconds greedy_coreset would take here for `size` centres among n points of `dim`
    dimensions: timed on random points of that shape, a run of 1 step and one of 1 + timed_steps
    (their difference is what each further step costs)."""
    points = torch.randn(dim, n).T  # dimension-major, as greedy_coreset keeps them
    greedy_coreset(points, 1)  # the first touch of the memory is not what the steps cost
    started = time.perf_counter()
    greedy_coreset(points, 1)
    one = time.perf_counter() - started
    started = time.perf_counter()
    greedy_coreset(points, min(n, 1 + timed_steps))
    more = time.perf_counter() - started
    return one + max(more - one, 0.0) / timed_steps * (size - 1)


def nearest(queries: torch.Tensor, bank: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances (M, k) to the k nearest bank rows of each query, nearest first, and their indices.

    The queries' own norms are added after the search (they do not change the order), which saves
    a pass over the M x K matrix; k = 1 takes the minimum instead of a sort.
    """
    partial = torch.addmm((bank * bank).sum(1), queries, bank.T, alpha=-2.0)  # d^2 - |q|^2
    if k == 1:
        values, indices = partial.min(dim=1, keepdim=True)
    else:
        values, indices = partial.topk(k, dim=1, largest=False)
    return (values + (queries * queries).sum(1, keepdim=True)).clamp_min(0.0).sqrt(), indices


def greedy_coreset(points: torch.Tensor, size: int, progress: Callable[[int], None] | None = None,
                   bound_dim: int = 0) -> tuple[torch.Tensor, float]:
    """Indices (in selection order) of `size` points of `points` (N, d) chosen greedily, and the
    covering radius: the largest distance from any point to its nearest chosen one.

    The first centre is the point farthest from the mean of all points; each next one is the point
    farthest from the centres chosen so far (the lowest index among ties). Each step compares the new
    centre with every point (a matrix-vector product on the points stored dimension-major, which this
    CPU reads 2 to 3 times faster; no N x N matrix). bound_dim > 0 (below d) chooses the same centres
    (up to float rounding at near ties) with less work: distances within the first bound_dim
    principal components never exceed the full ones, so one pass over those skips every point the
    new centre cannot bring nearer, and only the rest (a few percent after the first steps) is
    compared in full. progress(n) is called with the
    number of centres added since the last call.
    """
    n, dim = points.shape
    if not 1 <= size <= n:
        raise ValueError(f"coreset size must be in [1, {n}], got {size}")
    points = points.float()
    columns = points.T.contiguous().T  # (N, d) view of a (d, N) buffer, for the passes over every point
    rows = points.contiguous()  # for gathering the points a step compares in full
    norms = (rows * rows).sum(1)
    mean = rows.mean(0)
    nearest = torch.addmv(norms, columns, mean, alpha=-2.0).add_(mean.dot(mean))  # distance^2 to the mean
    chosen = torch.empty(size, dtype=torch.long)
    index = int(nearest.argmax())
    nearest.fill_(math.inf)
    bounded = 0 < bound_dim < dim
    if bounded:
        axes = principal_axes(rows, bound_dim)
        low = (rows @ axes - mean @ axes).T.contiguous().T  # centred: the bound's rounding does not grow with an offset
        low_norms, bound = (low * low).sum(1), torch.empty(n, device=rows.device)
        skip = torch.empty(n, dtype=torch.bool, device=rows.device)
    for step in range(size):
        chosen[step] = index
        centre = rows[index]
        compared = None
        if bounded:  # the margin keeps float rounding from skipping a point the centre is nearer to
            torch.addmv(low_norms, low, low[index], alpha=-2.0, out=bound)
            bound.add_(low[index].dot(low[index])).mul_(BOUND_MARGIN)
            compared = torch.lt(bound, nearest, out=skip).nonzero().squeeze(1)
        if compared is None or len(compared) > n // DENSE_SHARE:
            distances = torch.addmv(norms, columns, centre, alpha=-2.0).add_(centre.dot(centre))
            torch.minimum(nearest, distances, out=nearest)
        else:
            distances = torch.addmv(norms[compared], rows[compared], centre, alpha=-2.0).add_(centre.dot(centre))
            nearest[compared] = torch.minimum(nearest[compared], distances)
        index = int(nearest.argmax())
        if progress is not None and (step % 64 == 63 or step == size - 1):
            progress(step % 64 + 1)
    return chosen, math.sqrt(max(float(nearest.max()), 0.0))


def principal_axes(points: torch.Tensor, k: int) -> torch.Tensor:
    """(d, k) orthonormal axes of the k largest principal components of points (N, d): projecting on
    them keeps most of the distances' spread and never lengthens one."""
    mean = points.mean(0)
    covariance = torch.zeros(points.shape[1], points.shape[1], dtype=torch.float64, device=points.device)
    for start in range(0, points.shape[0], AXES_CHUNK):  # float64 sums, a chunk at a time
        chunk = (points[start : start + AXES_CHUNK] - mean).double()
        covariance += chunk.T @ chunk
    _, vectors = torch.linalg.eigh(covariance)
    return vectors[:, -k:].float()


def nearest_neighbours(queries: torch.Tensor, bank: torch.Tensor, k: int,
                       chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """nearest() computed `chunk` queries at a time, so memory stays at chunk x K."""
    parts = [nearest(queries[start : start + chunk], bank, k) for start in range(0, queries.shape[0], chunk)]
    return torch.cat([d for d, _ in parts]), torch.cat([i for _, i in parts])
