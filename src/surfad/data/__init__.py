"""Data layer: files -> samples (layouts, splits) -> arrays (io, transforms) -> tensors (datasets)."""
