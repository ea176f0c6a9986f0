"""The one record every layout produces: an image file, its label and its optional mask."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

GOOD = "good"
DEFECT = "defect"  # the type of a defective image whose layout does not name its defect classes


@dataclass(frozen=True)
class Sample:
    """One image of a dataset.

    label is 0 for a good (defect-free) image and 1 for a defective one; defect_type is "good" or
    the defect class name ("defect" when a defective image comes without one); mask_path is None
    when the image has no pixel annotation (always for good images, whose mask is all zeros).
    """

    path: Path
    label: int
    defect_type: str = GOOD
    mask_path: Path | None = None

    def __post_init__(self) -> None:
        if self.label and self.defect_type in ("", GOOD):
            object.__setattr__(self, "defect_type", DEFECT)

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "label": self.label,
            "defect_type": self.defect_type,
            "mask_path": None if self.mask_path is None else str(self.mask_path),
        }
