"""Train / val / test splits of a dataset: built from a layout, checked file by file, saved as JSON.

make_splits decodes every image and mask once, so a corrupt file, a missing mask or a mask of the
wrong size is reported before training starts rather than in the middle of an epoch (about 1 ms per
small JPEG); for training it leaves the test files unopened (check_test=False). val is a seeded hold-out of the training good images plus the layout's validation/
samples; it is used for model selection and thresholds and never shares a file with test.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from surfad.config import DataConfig
from surfad.data.io import read_image, read_mask
from surfad.data.layouts import BadFiles, load_layout, seeded_holdout
from surfad.data.samples import GOOD, Sample
from surfad.errors import BadInputError, SurfadError
from surfad.utils import atomic_write_json, read_json

SPLIT_NAMES = ("train", "val", "test")


@dataclass
class Splits:
    """The samples of each split, the dataset they come from and the files skipped as bad."""

    layout: str
    root: str
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    train_defects: list[Sample] = field(default_factory=list)  # data.train_defects: in no split, never tested on

    def get(self, name: str) -> list[Sample]:
        """The samples of split `name`; an error when the name is unknown or the split is empty."""
        if name not in SPLIT_NAMES:
            raise SurfadError(f"unknown split {name!r}; valid: {', '.join(SPLIT_NAMES)}")
        samples = getattr(self, name)
        if not samples:
            raise SurfadError(f"split {name!r} is empty in {self.root}")
        return samples

    def summary(self) -> str:
        """A small table of image counts per split, label and defect type, and the skipped files."""
        lines = [
            f"dataset {self.root} (layout {self.layout})",
            f"{'split':<6} {'images':>6} {'good':>6} {'defect':>6}  defect types",
        ]
        for name in SPLIT_NAMES:
            samples = getattr(self, name)
            good = sum(s.label == 0 for s in samples)
            types = Counter(s.defect_type for s in samples if s.label != 0)
            kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(types.items())) or "-"
            lines.append(f"{name:<6} {len(samples):>6} {good:>6} {len(samples) - good:>6}  {kinds}")
        if self.train_defects:
            types = Counter(s.defect_type for s in self.train_defects)
            lines.append(f"train defects {len(self.train_defects)} (" + ", ".join(f"{kind} {count}" for kind, count in
                         sorted(types.items())) + "): trained on, so left out of validation and test")
        lines.append(f"skipped bad files: {len(self.skipped)}")
        lines += [f"  {path}: {reason}" for path, reason in self.skipped[:5]]
        if len(self.skipped) > 5:
            lines.append(f"  ... and {len(self.skipped) - 5} more")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"layout": self.layout, "root": self.root}
        for name in SPLIT_NAMES:
            out[name] = [s.to_dict() for s in getattr(self, name)]
        out["skipped"] = [list(item) for item in self.skipped]
        out["train_defects"] = [s.to_dict() for s in self.train_defects]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Splits:
        try:
            lists = {name: [_sample(item) for item in d[name]] for name in SPLIT_NAMES}
            skipped = [(str(path), str(reason)) for path, reason in d.get("skipped", [])]
            defects = [_sample(item) for item in d.get("train_defects", [])]
            return cls(str(d["layout"]), str(d["root"]), skipped=skipped, train_defects=defects, **lists)
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise SurfadError(f"not a valid splits record ({type(err).__name__}: {err})") from None

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Splits:
        return read_json(path, "splits", cls.from_dict)


def _sample(item: dict[str, Any]) -> Sample:
    mask = item.get("mask_path")
    mask_path = None if mask is None else Path(mask)
    return Sample(Path(item["path"]), int(item["label"]), str(item.get("defect_type", GOOD)), mask_path)


def make_splits(cfg: DataConfig, check_test: bool = True) -> Splits:
    """Index cfg.path, drop (skip_bad) or report bad files, and hold out a seeded validation share.

    check_test=False lists the test split without opening its files: training does so, so a model is
    chosen and calibrated without a test image ever being read (evaluation reports a bad one).
    """
    index = load_layout(cfg)
    _check_disjoint({"train": index.train, "validation": index.validation, "test": index.test})
    bad = BadFiles(cfg.skip_bad, list(index.skipped))
    train = [s for s in index.train if _usable(s, bad)]
    validation = [s for s in index.validation if _usable(s, bad)]
    test = [s for s in index.test if _usable(s, bad)] if check_test else list(index.test)
    if not train:
        raise SurfadError(
            f"{index.root}: no usable training images; all {len(index.train)} were skipped as bad files"
        )
    listed = _listed_defects(cfg, index.root, index.test + index.validation)
    for sample in listed:
        if not _usable(sample, bad):
            raise SurfadError(f"data.train_defects: {sample.path} cannot be trained on ({bad.skipped[-1][1]})")
    validation = [s for s in validation if s not in listed]
    test = [s for s in test if s not in listed]
    train, held = seeded_holdout(train, cfg.val_ratio, cfg.split_seed, salt=2)
    return Splits(index.layout, str(index.root), train, held + validation, test, bad.skipped, listed)


def _listed_defects(cfg: DataConfig, root: Path, candidates: list[Sample]) -> list[Sample]:
    """The defective samples data.train_defects lists (paths relative to the dataset folder, one per
    line; blank lines and # comments skipped), in the list's order; an error names a line that is
    not a defective image of the dataset."""
    if not cfg.train_defects:
        return []
    list_file = Path(cfg.train_defects)
    try:
        lines = [line.strip() for line in list_file.read_text().splitlines()]
    except (OSError, UnicodeDecodeError) as err:
        raise SurfadError(f"data.train_defects: cannot read {list_file} ({err})") from None
    by_path = {s.path.resolve(): s for s in candidates}
    listed: list[Sample] = []
    for number, line in enumerate(lines, 1):
        if not line or line.startswith("#"):
            continue
        sample = by_path.get((root / line).resolve())
        if sample is None or sample.label != 1:
            what = "not an image of the dataset" if not (root / line).is_file() else \
                "not a defective image of the dataset's test or validation images"
            raise SurfadError(f"{list_file}, line {number}: {line} is {what} ({root})")
        if sample not in listed:
            listed.append(sample)
    if not listed:
        raise SurfadError(f"{list_file}: lists no image")
    return listed


def _usable(sample: Sample, bad: BadFiles) -> bool:
    """Decode the image (and its mask at the image's size); report a failure to bad."""
    try:
        image = read_image(sample.path)
        if sample.mask_path is not None:
            read_mask(sample.mask_path, image.shape[:2])
    except BadInputError as err:
        bad.report(sample.path, str(err).removeprefix(f"{sample.path}: "))
        return False
    return True


def _check_disjoint(groups: dict[str, list[Sample]]) -> None:
    """No file may be in two splits (validation data in test would inflate every reported metric)."""
    seen: dict[Path, tuple[str, Path]] = {}
    for name, samples in groups.items():
        for s in samples:
            key = s.path.resolve()
            if key in seen:
                first, first_path = seen[key]
                raise SurfadError(f"{first_path} ({first}) and {s.path} ({name}) are the same image; "
                                  "an image may be in one split only")
            seen[key] = (name, s.path)
