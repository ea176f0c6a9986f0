"""Dataset layouts on disk -> lists of Samples, one reader per layout.

Supported layouts (cfg.layout; "auto" detects mvtec, mt, dagm and ksdd2):

- mvtec: MVTec AD style. ``train/good/*``; ``test/<type>/*`` (``good`` = label 0); masks
  ``ground_truth/<type>/<stem>_mask.<ext>``. MVTec AD 2 keeps ground truth inside its split folder
  (``test_public/ground_truth/bad/...``) and has ``validation/good``; so for ``test`` (or
  ``test_public`` when there is no ``test``) and ``validation`` the masks of type T are looked up in
  ``<split>/ground_truth/T/`` first, then in ``ground_truth/T/``. A defect type with neither mask
  folder has image-level labels only (mask_path None); with a mask folder, a missing mask is a bad file.
- mt: Magnetic Tile Defects. ``MT_<Type>/Imgs/<name>.jpg`` with its mask ``<name>.png`` beside it
  (``.png`` files there are always masks, never images); ``MT_Free`` holds the good images.
- folder: ``<good_dir>/`` of good images, optional ``<defect_dir>/`` of defective ones and optional
  ``<mask_dir>/`` of masks named by ``mask_name`` (``{stem}`` = image name without extension).
  Optional ``<val_good_dir>/`` and ``<val_defect_dir>/`` (masks from the same mask folder) are
  validation images, beside the held-out share of the good images.
- dagm: one DAGM 2007 class folder (``ClassN``): ``Train/`` and ``Test/``, each with
  ``Label/Labels.txt`` (columns: index, flag 0/1, image name, 0, mask name or 0) and the masks.
- ksdd2: KolektorSDD2. ``train/`` and ``test/`` hold ``<name>.png`` with its mask ``<name>_GT.png``;
  an image is defective iff its mask has a nonzero pixel. Defective training images are never
  trained on: they become validation images, so epochs and thresholds are chosen on real defects.

The mt and folder layouts have no test split: cfg.train_list (a file of good image names) or a
seeded cfg.test_ratio share of the good images decides which good images are tested; defective
images are always test images. Images are files with a surfad.data.io.IMAGE_SUFFIXES extension (any
case), hidden files excluded (is_hidden), in sorted order, so the same folder always gives the same lists.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from surfad.config import DataConfig
from surfad.data.io import IMAGE_SUFFIXES, read_mask
from surfad.data.samples import DEFECT, GOOD, Sample
from surfad.errors import BadInputError, SurfadError

KSDD2_MASK = "_GT"  # KolektorSDD2: the mask of <name>.png is <name>_GT.png


@dataclass
class LayoutIndex:
    """What a layout found: samples per split as the layout defines them, and the skipped files."""

    layout: str
    root: Path
    train: list[Sample]  # good training images (from the layout, or from cfg.train_list)
    test: list[Sample]  # empty when the layout has no test images at all
    validation: list[Sample]  # from a validation/ folder (MVTec AD 2 style) when present, else []
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), with cfg.skip_bad


@dataclass
class BadFiles:
    """Unusable files: the first one raises BadInputError, or with skip_bad it is recorded and skipped."""

    skip_bad: bool
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def report(self, path: Path, problem: str) -> None:
        if not self.skip_bad:
            raise BadInputError(f"{path}: {problem} (skip_bad skips such files)")
        self.skipped.append((str(path), problem))


def is_hidden(name: str) -> bool:
    """Hidden files and folders (".name"), such as .git, .DS_Store or an interrupted write's temporary
    file, are never images to read: list_images and expand_inputs both leave them out."""
    return name.startswith(".")


def list_images(folder: Path) -> list[Path]:
    """Image files directly in folder (no hidden files), sorted; [] when the folder is absent."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not is_hidden(p.name)
                  and p.is_file())


def is_broken_link(path: Path) -> bool:
    """A symbolic link whose target is missing: an input that cannot be read, to report, not to drop."""
    return path.is_symlink() and not path.exists()


def expand_inputs(inputs: Iterable[str], exclude: str | Path | None = None) -> list[Path]:
    """Files, folders (recursive) and glob patterns -> a sorted, de-duplicated list of image files.

    Files named explicitly are kept whatever their suffix (decoding decides); folders and patterns
    contribute files with an image suffix, leaving out hidden files and everything in hidden
    folders below them (as list_images does; glob patterns match no hidden name unless they spell
    its dot). A broken symbolic link is kept, so reading it fails and it is reported with the
    others. Files under `exclude` (the output folder) are left out, so outputs written inside an
    input folder are not inspected on the next run.
    """
    inputs = list(inputs)
    found: list[Path] = []

    def image_like(p: Path) -> bool:
        return p.suffix.lower() in IMAGE_SUFFIXES and (p.is_file() or is_broken_link(p))

    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += [p for p in path.rglob("*") if image_like(p)
                      and not any(is_hidden(part) for part in p.relative_to(path).parts)]
        elif path.is_file() or is_broken_link(path):
            found.append(path)
        else:
            matches = [Path(m) for m in glob.glob(item, recursive=True)]
            if not matches:
                raise SurfadError(f"{item}: no such file, folder or matching pattern")
            found += [m for m in matches if image_like(m)]
    # A broken link keeps its own path (resolving it would name its missing target instead).
    unique = sorted({p.resolve() if p.exists() else p.absolute() for p in found})
    if exclude is not None:
        unique = [p for p in unique if not p.is_relative_to(Path(exclude).resolve())]
    if not unique:
        raise SurfadError(f"no images found in {', '.join(inputs)}")
    return unique


def folder_samples(good: str | Path | None, defect: str | Path | None) -> list[Sample]:
    """Every image directly in `good` (label 0) and in `defect` (label 1), without masks."""
    samples: list[Sample] = []
    for folder, label in ((good, 0), (defect, 1)):
        if folder is None:
            continue
        images = list_images(Path(folder))
        if not images:
            raise SurfadError(f"{folder}: no images directly in this folder (PNG, JPEG, BMP, TIFF or WebP)")
        samples += [Sample(path, label) for path in images]
    if not samples:
        raise SurfadError("no images: give a folder of good images, one of defective images, or both")
    return samples


def seeded_holdout(
    samples: list[Sample], ratio: float, seed: int, salt: int
) -> tuple[list[Sample], list[Sample]]:
    """Split samples into (kept, held out) with round(ratio * n) held out, at least one kept.

    The choice depends only on the sorted sample list, the seed and salt (which keeps different
    hold-outs made with the same seed independent); both parts keep the input order.
    """
    n = len(samples)
    n_held = min(int(round(ratio * n)), max(n - 1, 0))
    held = set(np.random.default_rng([seed, salt]).permutation(n)[:n_held].tolist())
    kept = [s for i, s in enumerate(samples) if i not in held]
    return kept, [s for i, s in enumerate(samples) if i in held]


def detect_layout(root: Path) -> str:
    """The layout of dataset folder root: "mvtec", "mt", "dagm" or "ksdd2"; SurfadError when none fits."""
    root = Path(root)
    if not root.is_dir():
        raise SurfadError(f"{root}: dataset folder not found")
    found = _detect(root)
    if found is not None:
        return found
    hint = ""
    inner = sorted(d.name for d in root.iterdir() if d.is_dir() and _detect(d) is not None)
    if inner:
        hint = f"; its subfolders {', '.join(inner[:8])} look like datasets: use one of them as the data path"
    raise SurfadError(
        f"{root}: cannot tell the dataset layout; expected mvtec (train/good, test/<type>), "
        f"mt (MT_<Type>/Imgs), dagm (Train/Label, Test/Label) or ksdd2 (train/<name>_GT.png); for plain "
        f"folders of good and defective images set the layout to folder{hint}"
    )


def _detect(root: Path) -> str | None:
    if (root / "train" / GOOD).is_dir():
        return "mvtec"
    if any(d.name.startswith("MT_") and d.is_dir() for d in root.iterdir()):
        return "mt"
    if (root / "Train" / "Label").is_dir():
        return "dagm"
    if (root / "train").is_dir() and any(p.stem.endswith(KSDD2_MASK) for p in (root / "train").iterdir()):
        return "ksdd2"
    return None


def load_layout(cfg: DataConfig) -> LayoutIndex:
    """Index the dataset at cfg.path with cfg.layout; missing masks are bad files (see BadFiles)."""
    if not cfg.path:
        raise SurfadError("data.path: no dataset folder given")
    root = Path(cfg.path)
    if not root.is_dir():
        raise SurfadError(f"data.path: {root} is not a folder")
    layout = detect_layout(root) if cfg.layout == "auto" else cfg.layout  # DataConfig checked cfg.layout
    if cfg.train_list and layout not in ("mt", "folder"):
        raise SurfadError(
            f"data.train_list: only used by layouts without a test split (mt, folder), not {layout}"
        )
    bad = BadFiles(cfg.skip_bad)
    train_dir, train, test, validation = _READERS[layout](root, cfg, bad)
    if not train:
        raise SurfadError(f"{train_dir}: no training images found ({layout} layout)")
    return LayoutIndex(layout, root, train, test, validation, bad.skipped)


Reader = tuple[Path, list[Sample], list[Sample], list[Sample]]  # (train folder, train, test, validation)


def _load_mvtec(root: Path, cfg: DataConfig, bad: BadFiles) -> Reader:
    train_dir = root / "train" / GOOD
    test_dir = root / "test"
    if not test_dir.is_dir() and (root / "test_public").is_dir():
        test_dir = root / "test_public"
    train = [Sample(p, 0) for p in list_images(train_dir)]
    return train_dir, train, _mvtec_split(root, test_dir, bad), _mvtec_split(root, root / "validation", bad)


def _mvtec_split(root: Path, split_dir: Path, bad: BadFiles) -> list[Sample]:
    """Samples of an MVTec split folder (test or validation): one subfolder per type."""
    if not split_dir.is_dir():
        return []
    samples: list[Sample] = []
    for type_dir in sorted(d for d in split_dir.iterdir() if d.is_dir() and d.name != "ground_truth"):
        kind = type_dir.name
        images = list_images(type_dir)
        if kind == GOOD:
            samples += [Sample(p, 0) for p in images]
            continue
        candidates = (split_dir / "ground_truth" / kind, root / "ground_truth" / kind)
        mask_dir = next((d for d in candidates if d.is_dir()), None)
        masks = _mask_index(mask_dir) if mask_dir is not None else {}
        for p in images:
            if mask_dir is None:
                samples.append(Sample(p, 1, kind))
            elif p.stem in masks:
                samples.append(Sample(p, 1, kind, masks[p.stem]))
            else:
                bad.report(p, f"mask not found: expected {mask_dir / (p.stem + '_mask')}.<png|jpg|...>")
    return samples


def _mask_index(mask_dir: Path) -> dict[str, Path]:
    """Image stem -> mask file for the files named <stem>_mask.<image extension> in mask_dir."""
    index: dict[str, Path] = {}
    for p in list_images(mask_dir):
        if p.stem.endswith("_mask"):
            index.setdefault(p.stem[: -len("_mask")], p)
    return index


def _load_mt(root: Path, cfg: DataConfig, bad: BadFiles) -> Reader:
    good: list[Sample] = []
    defects: list[Sample] = []
    free_dir = root / "MT_Free" / "Imgs"
    for type_dir in sorted(d for d in root.iterdir() if d.is_dir() and d.name.startswith("MT_")):
        image_dir = type_dir / "Imgs" if (type_dir / "Imgs").is_dir() else type_dir
        files = list_images(image_dir)
        masks = {p.stem: p for p in files if p.suffix.lower() == ".png"}
        images = [p for p in files if p.suffix.lower() != ".png"]
        if type_dir.name == "MT_Free":
            free_dir = image_dir
            good += [Sample(p, 0) for p in images]
            continue
        kind = type_dir.name[len("MT_") :].lower()
        for p in images:
            if p.stem in masks:
                defects.append(Sample(p, 1, kind, masks[p.stem]))
            else:
                bad.report(p, f"mask not found: expected {p.with_suffix('.png')}")
    train, test_good = _split_good(good, cfg, root, free_dir)
    return free_dir, train, test_good + defects, []


def _load_folder(root: Path, cfg: DataConfig, bad: BadFiles) -> Reader:
    good_dir = root / cfg.good_dir
    if not good_dir.is_dir():
        raise SurfadError(f"data.good_dir: folder of good images {good_dir} not found; name the folder of good "
                          "images with --good-dir (relative to the data path, '.' for the data path itself)")
    mask_dir = root / cfg.mask_dir if cfg.mask_dir else None
    if mask_dir is not None and not mask_dir.is_dir():
        raise SurfadError(f"data.mask_dir: mask folder {mask_dir} not found")
    defects = _folder_defects(root, cfg.defect_dir, mask_dir, cfg.mask_name, bad)
    validation: list[Sample] = []
    for name, folder in (("val_good_dir", cfg.val_good_dir), ("val_defect_dir", cfg.val_defect_dir)):
        if folder and not (root / folder).is_dir():
            raise SurfadError(f"data.{name}: validation folder {root / folder} not found")
    if cfg.val_good_dir:
        validation += [Sample(p, 0) for p in list_images(root / cfg.val_good_dir)]
    validation += _folder_defects(root, cfg.val_defect_dir, mask_dir, cfg.mask_name, bad)
    train, test_good = _split_good([Sample(p, 0) for p in list_images(good_dir)], cfg, root, good_dir)
    return good_dir, train, test_good + defects, validation


def _folder_defects(root: Path, folder: str | None, mask_dir: Path | None, mask_name: str, bad: BadFiles) -> list[Sample]:
    """Defective images of a folder-layout folder (none when `folder` is unset or absent), typed by the
    folder's name, each with its mask when there is a mask folder."""
    if not folder:
        return []
    kind = Path(folder).name
    defects: list[Sample] = []
    for p in list_images(root / folder):
        if mask_dir is None:
            defects.append(Sample(p, 1, kind))
            continue
        mask = mask_dir / _mask_name(mask_name, p.stem)
        if mask.is_file():
            defects.append(Sample(p, 1, kind, mask))
        else:
            bad.report(p, f"mask not found: expected {mask}")
    return defects


def _mask_name(pattern: str, stem: str) -> str:
    try:
        return pattern.format(stem=stem)
    except (KeyError, IndexError, ValueError):
        raise SurfadError(
            f"data.mask_name: {pattern!r} is not a valid name pattern; use {{stem}}, e.g. {{stem}}_mask.png"
        ) from None


def _split_good(
    good: list[Sample], cfg: DataConfig, root: Path, good_dir: Path
) -> tuple[list[Sample], list[Sample]]:
    """(train, test) good images of a layout without a test split: by cfg.train_list or cfg.test_ratio.

    The list file is looked up as given, then relative to the dataset folder; its lines are image
    file names (a leading folder is ignored; blank lines and # comments are skipped).
    """
    if not cfg.train_list:
        return seeded_holdout(good, cfg.test_ratio, cfg.split_seed, salt=1)
    list_file = Path(cfg.train_list)
    if not list_file.is_file() and not list_file.is_absolute() and (root / list_file).is_file():
        list_file = root / list_file
    try:
        lines = list_file.read_text().splitlines()
    except OSError:
        raise SurfadError(f"data.train_list: cannot read {cfg.train_list} (also looked in {root})") from None
    names = {Path(line.strip()).name for line in lines if line.strip() and not line.strip().startswith("#")}
    known = {s.path.name for s in good}
    missing = sorted(names - known)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise SurfadError(f"{list_file}: listed image(s) not found in {good_dir}: {shown}")
    return [s for s in good if s.path.name in names], [s for s in good if s.path.name not in names]


def _load_dagm(root: Path, cfg: DataConfig, bad: BadFiles) -> Reader:
    if not (root / "Train").is_dir():
        classes = sorted(d.name for d in root.iterdir() if (d / "Train").is_dir())
        hint = f": point the data path at one class folder ({', '.join(classes[:10])})" if classes else ""
        raise SurfadError(f"{root}: no Train folder of a DAGM class{hint}")
    train = _dagm_split(root / "Train", bad, good_only=True)
    return root / "Train", train, _dagm_split(root / "Test", bad, good_only=False), []


def _dagm_split(split_dir: Path, bad: BadFiles, good_only: bool) -> list[Sample]:
    """Samples of a DAGM Train or Test folder, labelled by its Label/Labels.txt."""
    label_dir = split_dir / "Label"
    labels_file = label_dir / "Labels.txt"
    if not labels_file.is_file():
        raise SurfadError(f"{labels_file}: DAGM label list not found")
    labels = _read_dagm_labels(labels_file)
    samples: list[Sample] = []
    for p in list_images(split_dir):
        if p.name not in labels:
            bad.report(p, f"not listed in {labels_file}")
            continue
        defective, mask_name = labels[p.name]
        if not defective:
            samples.append(Sample(p, 0))
        elif not good_only:
            mask = label_dir / mask_name if mask_name else None
            if mask is not None and mask.is_file():
                samples.append(Sample(p, 1, DEFECT, mask))
            else:
                bad.report(p, f"mask not found: {labels_file} gives {mask_name or 'none'} in {label_dir}")
    return samples


def _read_dagm_labels(path: Path) -> dict[str, tuple[bool, str | None]]:
    """Image name -> (defective, mask file name or None) from a DAGM Labels.txt."""
    labels: dict[str, tuple[bool, str | None]] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        cols = line.split()
        if len(cols) < 3:  # the header line (a count) and blank lines
            continue
        if cols[1] not in ("0", "1"):
            raise SurfadError(f"{path}:{number}: expected a 0/1 defect flag in column 2, got {cols[1]!r}")
        mask = cols[4] if len(cols) >= 5 and cols[4] != "0" else None
        labels[cols[2]] = (cols[1] == "1", mask)
    return labels


def _load_ksdd2(root: Path, cfg: DataConfig, bad: BadFiles) -> Reader:
    train_good, train_defects = _ksdd2_split(root / "train", bad)
    test_good, test_defects = _ksdd2_split(root / "test", bad)
    return root / "train", train_good, test_good + test_defects, train_defects


def _ksdd2_split(split_dir: Path, bad: BadFiles) -> tuple[list[Sample], list[Sample]]:
    """(good, defective) samples of a KolektorSDD2 folder, labelled by whether each mask is empty."""
    good: list[Sample] = []
    defects: list[Sample] = []
    for p in list_images(split_dir):
        if p.stem.endswith(KSDD2_MASK):
            continue
        mask = p.with_name(f"{p.stem}{KSDD2_MASK}.png")
        if not mask.is_file():
            bad.report(p, f"mask not found: expected {mask}")
        elif read_mask(mask).any():
            defects.append(Sample(p, 1, DEFECT, mask))
        else:
            good.append(Sample(p, 0))
    return good, defects


_READERS = {"mvtec": _load_mvtec, "mt": _load_mt, "folder": _load_folder, "dagm": _load_dagm, "ksdd2": _load_ksdd2}
