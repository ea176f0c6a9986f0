"""The inspection service: app (routes, limits, batching, workers) and record (log, live figures)."""

MAX_BATCH = 8  # `surfad serve`'s default --max-batch: waiting requests share a forward pass (benchmarks/RESULTS.md)
