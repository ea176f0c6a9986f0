"""The one record every layout produces: an image file, its label and its optional mask."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

GOOD = "good"


@dataclass(frozen=True)
class Sample:
    """One image of a dataset.

    label is 0 for a good (defect-free) image and 1 for a defective one; defect_type is "good" or
    the defect class name; mask_path is None when the image has no pixel annotation (always for
    good images, whose mask is all zeros).
    """

    path: Path
    label: int
    defect_type: str = GOOD
    mask_path: Path | None = None

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "label": self.label,
            "defect_type": self.defect_type,
            "mask_path": None if self.mask_path is None else str(self.mask_path),
        }
