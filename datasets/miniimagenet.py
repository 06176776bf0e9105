"""miniImageNet with the Ravi & Larochelle (2017) split: 64 / 16 / 20 ImageNet classes, 600 images each.

Layout under ``<data dir>/miniimagenet/``:

* ``splits/ravi/{train,val,test}.csv``: header ``filename,label``, rows like
  ``n0153282900000005.jpg,n01532829`` (as published in twitter/meta-learning-lstm,
  ``data/miniImagenet/``).
* ``images/<filename>``: the images, made from ILSVRC-2012 train (whose terms of use apply).

Classes are the labels (WordNet ids) in order of first appearance in the CSV; a class's images
are in CSV order. Every class must have the same number of images.

Preprocessing, per image: Pillow ``open`` -> ``convert("RGB")`` -> ``resize((S, S), LANCZOS)``
unless it already is ``S x S`` (non-square images are stretched, as in Ravi & Larochelle's
script). Images stay uint8 in memory (train at 84px is 813 MB as uint8, four times that as
float32); ``ClassPool.gather`` converts to float32 in [0, 1].

Each split is decoded once and cached as ``.npy`` plus a JSON sidecar in ``cache_dir`` (default
``default_cache_dir()``). The cache key is the CSV's sha256, every listed image's size in bytes,
the image size and ``PREPROCESS_VERSION``; a stale or corrupt entry is rebuilt with a logged
warning.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import logging
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from .base import (
    ClassificationDataset,
    ClassPool,
    DatasetError,
    default_cache_dir,
    load_array_cache,
    resolve_data_dir,
    save_array_cache,
)

logger = logging.getLogger(__name__)

PREPROCESS_VERSION = 1
"""Bump when the decoding or preprocessing changes, so every cached split is rebuilt."""

SPLITS = ("train", "val", "test")
CSV_HEADER = "filename,label"

_EXPECTED = (
    "splits/ravi/{train,val,test}.csv (from github.com/twitter/meta-learning-lstm, data/miniImagenet/) "
    "and images/<filename> made from ILSVRC-2012 train"
)
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_MISSING_SHOWN = 1


class MiniImageNet(ClassificationDataset):
    """miniImageNet (Ravi & Larochelle split) as class pools of uint8 RGB images.

    Args:
        data_dir: the folder holding ``miniimagenet/`` (the ``--data-dir`` option); ``None``
            reads ``$METABENCH_DATA``.
        image_size: side ``S`` in pixels of the square images; 84 is the usual size.
        cache_dir: where decoded splits are cached; ``None`` uses ``default_cache_dir()``.
        show_progress: show a progress bar (on stderr) while decoding.

    ``split(name)`` returns a ``ClassPool`` whose images are uint8 ``[C, M, S, S, 3]`` (RGB, 0-255;
    ``C`` = 64 / 16 / 20 and ``M`` = 600 for the real split). Construction only checks the
    arguments and the data folder; a split's CSV is read and its images decoded (or loaded from
    the cache) on the first ``split`` call, once per object.

    Example (not run as a doctest: it needs the real miniImageNet under ``/data/miniimagenet/``;
    tests/test_miniimagenet.py runs the loader on generated images):
        >>> mini = MiniImageNet("/data")  # doctest: +SKIP
        >>> mini.class_names("val")[:2]  # doctest: +SKIP
        ('n01855672', 'n02091244')
        >>> mini.split("test").images.shape  # doctest: +SKIP
        (20, 600, 84, 84, 3)
    """

    name = "miniimagenet"
    preprocess_version = PREPROCESS_VERSION

    def __init__(
        self,
        data_dir: str | os.PathLike | None = None,
        *,
        image_size: int = 84,
        cache_dir: str | os.PathLike | None = None,
        show_progress: bool = True,
    ):
        if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size <= 0:
            raise DatasetError(f"Received: image_size={image_size!r}, expected a positive integer (84 is usual).")
        self.data_dir = data_dir
        self.image_size = image_size
        self.cache_dir = cache_dir
        self.show_progress = show_progress
        self.root = resolve_data_dir(data_dir, "miniimagenet", _EXPECTED)
        self._pools: dict[str, ClassPool] = {}

    def __repr__(self) -> str:
        return f"MiniImageNet({str(self.root.parent)!r}, image_size={self.image_size})"

    def split_names(self) -> tuple[str, ...]:
        return SPLITS

    def csv_path(self, name: str) -> Path:
        """``<data dir>/miniimagenet/splits/ravi/<name>.csv``."""
        self._check_split_name(name)
        return self.root / "splits" / "ravi" / f"{name}.csv"

    def class_names(self, name: str) -> tuple[str, ...]:
        """Split ``name``'s classes (WordNet ids) in CSV order; reads the CSV only, not the images."""
        return tuple(read_split_csv(self.csv_path(name)))

    def split(self, name: str) -> ClassPool:
        """The classes of split ``name``: images uint8 ``[C, M, S, S, 3]``."""
        self._check_split_name(name)
        if name not in self._pools:
            path = self.csv_path(name)
            classes = read_split_csv(path)
            images = self._load_split(name, path, classes)
            images.flags.writeable = False
            self._pools[name] = ClassPool(name, images, tuple(classes))
        return self._pools[name]

    def _load_split(self, name: str, csv_path: Path, classes: dict[str, tuple[str, ...]]) -> np.ndarray:
        image_dir = self.root / "images"
        files = [image_dir / filename for filenames in classes.values() for filename in filenames]
        sizes = []
        missing = []
        for file in files:
            try:
                sizes.append(file.stat().st_size)
            except OSError:
                missing.append(file)
        if missing:
            raise DatasetError(
                f"{len(missing)} of the {len(files)} images listed in {str(csv_path)!r} are missing, the first "
                f"being {str(missing[0])!r}. Put the miniImageNet images (made from ILSVRC-2012 train) in "
                f"{str(image_dir)!r}."
            )
        digest = hashlib.sha256()
        digest.update(f"miniimagenet preprocess={PREPROCESS_VERSION} image_size={int(self.image_size)}\n".encode())
        digest.update(hashlib.sha256(csv_path.read_bytes()).hexdigest().encode() + b"\n")
        digest.update(" ".join(map(str, sizes)).encode())
        key = digest.hexdigest()
        cache_root = Path(self.cache_dir) if self.cache_dir is not None else default_cache_dir()
        cache_path = cache_root / "miniimagenet" / f"{name}-{int(self.image_size)}px-{key[:16]}.npy"
        expected = {
            "dataset": "miniimagenet",
            "split": name,
            "key": key,
            "preprocess_version": PREPROCESS_VERSION,
            "image_size": int(self.image_size),
            "class_names": list(classes),
        }
        images = load_array_cache(cache_path, expected)
        if images is not None:
            logger.info("Loaded miniImageNet %s (%d classes) from the cache %s.", name, len(classes), cache_path)
            return images
        logger.info(
            "Decoding miniImageNet %s (%d classes, %d images) at %dpx; cached in %s.",
            name, len(classes), len(files), self.image_size, cache_path,
        )
        per_class = len(next(iter(classes.values())))
        images = _decode_files(files, int(self.image_size), self.show_progress, f"Decoding miniImageNet {name}")
        images = images.reshape(len(classes), per_class, *images.shape[1:])
        save_array_cache(cache_path, images, expected)
        return images


def read_split_csv(path: str | os.PathLike) -> dict[str, tuple[str, ...]]:
    """A Ravi split CSV as ``{label: (filename, ...)}``, labels in order of first appearance.

    Checks the header (``filename,label``), that every row has two fields, that filenames are
    plain file names (no folders, no ``..``) listed once, and that every class has the same
    number of images. Errors name the file and line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as err:
        raise DatasetError(
            f"Split file {str(path)!r} does not exist; copy train.csv, val.csv and test.csv from "
            f"github.com/twitter/meta-learning-lstm (data/miniImagenet/) into {str(path.parent)!r}."
        ) from err
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"Cannot read the split file {str(path)!r}: {err}.") from err
    lines = text.splitlines()
    if not lines or lines[0].strip() != CSV_HEADER:
        header = lines[0] if lines else ""
        raise DatasetError(f"{str(path)!r} line 1: header {header!r}, expected {CSV_HEADER!r}.")
    classes: dict[str, list[str]] = {}
    seen: dict[str, int] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != 2 or not all(_SAFE_NAME.fullmatch(field) for field in fields) or ".." in fields[0]:
            raise DatasetError(
                f"{str(path)!r} line {number}: {line!r} is not '<filename>,<label>' with a plain file name "
                f"and label (letters, digits, '_', '-', '.'), e.g. 'n0153282900000005.jpg,n01532829'."
            )
        filename, label = fields
        if filename in seen:
            raise DatasetError(f"{str(path)!r} line {number}: {filename!r} is listed again (first on line {seen[filename]}).")
        seen[filename] = number
        classes.setdefault(label, []).append(filename)
    if not classes:
        raise DatasetError(f"{str(path)!r} lists no images; expected rows like 'n0153282900000005.jpg,n01532829'.")
    counts = {label: len(filenames) for label, filenames in classes.items()}
    if len(set(counts.values())) > 1:
        raise DatasetError(
            f"{str(path)!r}: classes have different numbers of images ({_describe_counts(counts)}); "
            f"every class must have the same number."
        )
    return {label: tuple(filenames) for label, filenames in classes.items()}


def _describe_counts(counts: dict[str, int]) -> str:
    by_count: dict[int, list[str]] = {}
    for label, count in counts.items():
        by_count.setdefault(count, []).append(label)
    return "; ".join(
        f"{count} images: {', '.join(labels[:3])}{' ...' if len(labels) > 3 else ''}"
        for count, labels in sorted(by_count.items())
    )


def _decode_image(data: bytes, image_size: int) -> np.ndarray:
    """One image file's bytes -> uint8 ``[S, S, 3]`` RGB."""
    with Image.open(io.BytesIO(data)) as image:
        rgb = image.convert("RGB")
    if rgb.size != (image_size, image_size):
        rgb = rgb.resize((image_size, image_size), Image.LANCZOS)
    return np.asarray(rgb, dtype=np.uint8)


def _decode_file(file: Path, image_size: int) -> np.ndarray:
    try:
        data = file.read_bytes()
    except OSError as err:
        raise DatasetError(f"Cannot read the image {str(file)!r}: {err}.") from err
    try:
        return _decode_image(data, image_size)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as err:
        raise DatasetError(
            f"Image {str(file)!r} cannot be decoded ({err}); replace it with the image made from ILSVRC-2012 train."
        ) from err


def _decode_files(files: list[Path], image_size: int, show_progress: bool, description: str) -> np.ndarray:
    """Decode ``files`` into uint8 ``[len(files), S, S, 3]``.

    Uses a thread pool: Pillow releases the GIL while decoding and resizing, and full-size
    ImageNet JPEGs decode about twice as fast on 2 cores this way (measured).
    """
    images = np.empty((len(files), image_size, image_size, 3), dtype=np.uint8)
    workers = min(8, os.cpu_count() or 1)
    with _progress(show_progress) as progress, concurrent.futures.ThreadPoolExecutor(workers) as pool:
        task = progress.add_task(description, total=len(files))
        for i, image in enumerate(pool.map(_decode_file, files, [image_size] * len(files))):
            images[i] = image
            progress.advance(task)
    return images


def _progress(enabled: bool):
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=not enabled,
    )
