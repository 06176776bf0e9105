"""Omniglot (Lake, Salakhutdinov & Tenenbaum, 2015): handwritten characters, 20 drawings each.

The official data is two archives from https://github.com/brendenlake/omniglot (``python/``):
``images_background.zip`` (30 alphabets, 964 characters) and ``images_evaluation.zip`` (20
alphabets, 659 characters), 1,623 characters and 32,460 PNGs in all. Put them (or the folders
they extract to) in ``<data dir>/omniglot/``. Members are read straight from the zips; nothing is
extracted.

Classes are characters, named ``"<Alphabet>/characterNN"``. Every split's classes are sorted by
that name (Python string order), so a split's class order never depends on the scheme's own
order.

Split schemes (``split_scheme=``):

* ``"official"``: splits ``("background", "evaluation")``, the two archives.
* ``"maml"``: splits ``("train", "val", "test")``. All characters of both archives, sorted by
  name, are permuted with ``np.random.default_rng(1).permutation(n)``; the first 1,100 are train,
  the next 100 val, the rest test (423 on the official data). The permutation is deterministic
  on every machine (NumPy's ``Generator`` stream, stable since NumPy 1.17; a test pins it). It
  needs at least 1,201 characters; smaller archives raise ``DatasetError``.
* ``"mamlpp"``: splits ``("train", "val", "test")`` as the MAML++ reference code
  (AntreasAntoniou/HowToTrainYourMAMLPytorch, ``data.py``) makes them: all characters, sorted by
  name, are shuffled with ``np.random.RandomState(0)`` (its ``val_seed``) and cut at the fractions
  of its Omniglot configs, ``train_val_test_split = [0.70918052988, 0.03080714725, 0.2606284658]``,
  by integer truncation: ``int(0.70918052988 * n)`` and ``int((0.70918052988 + 0.03080714725) * n)``,
  1,150 / 50 / 423 characters on the official data. The counts and the rule are the reference's;
  the members are not: its order before the shuffle comes from a directory walk, which this
  harness cannot recreate, so the characters in each split differ.
* ``"vinyals"``: splits ``("train", "val", "test", "trainval")`` of Vinyals et al. (2016), read
  from ``<data dir>/omniglot/splits/vinyals/<split>.txt`` as published by
  jakesnell/prototypical-networks (``data/omniglot/splits/vinyals/``): lines
  ``<Alphabet>/characterNN/rotDDD``. The rotation suffix is dropped and each character counted
  once (1,028 / 172 / 423 / 1,200 characters); augmenting with rotated copies as extra classes is
  left to the episode sampler.

Preprocessing, per image (``preprocess=``):

* ``"lanczos_inverted"`` (default; this project's first version): Pillow ``open`` ->
  ``convert("L")`` -> ``resize((S, S), LANCZOS)`` -> float32 / 255 -> ``1 - x``, so strokes are 1
  and the background 0, with anti-aliased grey edges.
* ``"nearest_binary"`` (the MAML++ reference code's): the 1-bit PNG resized as it is, which Pillow
  does with nearest-neighbour sampling whatever filter is asked for (``Image.resize`` uses NEAREST
  for mode ``"1"``), then read as float32 without scaling or inversion: every pixel 0 or 1,
  strokes 0 and the background 1.
* ``"nearest_binary_inverted"`` (the MAML code's): the same pixels inverted, strokes 1 and the
  background 0. The MAML code's ``resize_images.py`` asks for LANCZOS on the 1-bit PNGs, which
  Pillow turns into nearest-neighbour sampling, and its data generator computes ``1 - x / 255``.

Decoding all 32,460 PNGs takes a few seconds, so the result (float32 ``[characters, 20, S, S,
1]``) is cached as ``.npy`` plus a JSON sidecar in ``cache_dir`` (default
``default_cache_dir()``; the data folder may be read-only). The cache key is the sha256 of both
archives' bytes (for extracted folders: of their sorted relative paths and file sizes), the image
size, ``PREPROCESS_VERSION`` and (when it is not the default) ``preprocess``; a stale or corrupt
entry is rebuilt with a logged warning.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import re
import zipfile
import zlib
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
"""Bump when the decoding or preprocessing changes, so every cached array is rebuilt."""

IMAGES_PER_CHARACTER = 20
ARCHIVES = ("background", "evaluation")
SPLIT_SCHEMES = ("maml", "mamlpp", "official", "vinyals")
PREPROCESSING = ("lanczos_inverted", "nearest_binary", "nearest_binary_inverted")
VINYALS_SPLITS = ("train", "val", "test", "trainval")
MAML_SEED = 1
MAML_TRAIN_CHARACTERS = 1100
MAML_VAL_CHARACTERS = 100
MAMLPP_SEED = 0
MAMLPP_FRACTIONS = (0.70918052988, 0.03080714725, 0.2606284658)  # the reference's train_val_test_split

_SOURCE_URL = "https://github.com/brendenlake/omniglot (python/)"
_EXPECTED = f"images_background.zip and images_evaluation.zip (or their extracted folders) from {_SOURCE_URL}"
_VINYALS_SOURCE = "github.com/jakesnell/prototypical-networks (data/omniglot/splits/vinyals/)"
_MEMBER_PATTERN = re.compile(r"images_(background|evaluation)/([^/]+)/(character\d+)/(\d+_\d+\.png)")
_VINYALS_LINE = re.compile(r"([^/\s]+)/(character\d+)/rot(000|090|180|270)")
_MAX_MEMBER_BYTES = 16 * 2**20  # an Omniglot PNG is ~300 bytes; refuse anything absurd before reading it


class Omniglot(ClassificationDataset):
    """Omniglot characters as class pools of float32 images.

    Args:
        data_dir: the folder holding ``omniglot/`` (the ``--data-dir`` option); ``None`` reads
            ``$METABENCH_DATA``.
        image_size: side ``S`` in pixels of the square images after resizing; 28 is the usual
            few-shot size, 105 the original.
        split_scheme: ``"maml"`` (train/val/test, 1,100/100/423 characters), ``"mamlpp"``
            (train/val/test, 1,150/50/423), ``"official"`` (background/evaluation archives) or
            ``"vinyals"`` (train/val/test/trainval); see the module docstring.
        preprocess: ``"lanczos_inverted"`` (grey levels, strokes 1), ``"nearest_binary"`` (0/1,
            strokes 0) or ``"nearest_binary_inverted"`` (0/1, strokes 1); see the module docstring.
        cache_dir: where the decoded array is cached; ``None`` uses ``default_cache_dir()``.
        show_progress: show a progress bar (on stderr) while decoding.

    ``split(name)`` returns a ``ClassPool`` whose images are float32 ``[C, 20, S, S, 1]`` in [0, 1]
    (strokes 1 and background 0 unless ``preprocess="nearest_binary"``), classes sorted by name.
    Construction only checks that the files are there; the images are decoded (or loaded from the
    cache) on the first ``split`` call, once per object.

    Example (not run as a doctest: it needs the official archives under ``/data/omniglot/``;
    tests/test_omniglot.py runs the loader on generated archives):
        >>> omniglot = Omniglot("/data", image_size=28, split_scheme="maml")  # doctest: +SKIP
        >>> pool = omniglot.split("test")  # doctest: +SKIP
        >>> pool.images.shape  # doctest: +SKIP
        (423, 20, 28, 28, 1)
    """

    name = "omniglot"
    preprocess_version = PREPROCESS_VERSION

    def __init__(
        self,
        data_dir: str | os.PathLike | None = None,
        *,
        image_size: int = 28,
        split_scheme: str = "maml",
        preprocess: str = "lanczos_inverted",
        cache_dir: str | os.PathLike | None = None,
        show_progress: bool = True,
    ):
        if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size <= 0:
            raise DatasetError(f"Received: image_size={image_size!r}, expected a positive integer (28 is usual).")
        if split_scheme not in SPLIT_SCHEMES:
            raise DatasetError(f"Received: split_scheme={split_scheme!r}, expected one of {list(SPLIT_SCHEMES)}.")
        if preprocess not in PREPROCESSING:
            raise DatasetError(f"Received: preprocess={preprocess!r}, expected one of {list(PREPROCESSING)}.")
        self.data_dir = data_dir
        self.image_size = image_size
        self.split_scheme = split_scheme
        self.preprocess = preprocess
        self.cache_dir = cache_dir
        self.show_progress = show_progress
        self.root = resolve_data_dir(data_dir, "omniglot", _EXPECTED)
        self._archives = tuple(_find_archive(self.root, archive) for archive in ARCHIVES)
        if split_scheme == "vinyals":
            _check_vinyals_files(self.root)
        self._index: tuple[_Character, ...] | None = None
        self._images: np.ndarray | None = None
        self._pools: dict[str, ClassPool] = {}

    def __repr__(self) -> str:
        return (
            f"Omniglot({str(self.root.parent)!r}, image_size={self.image_size}, "
            f"split_scheme={self.split_scheme!r}"
            + (f", preprocess={self.preprocess!r})" if self.preprocess != PREPROCESSING[0] else ")")
        )

    def split_names(self) -> tuple[str, ...]:
        if self.split_scheme == "official":
            return ARCHIVES
        if self.split_scheme in ("maml", "mamlpp"):
            return ("train", "val", "test")
        return VINYALS_SPLITS

    def split(self, name: str) -> ClassPool:
        """The characters of split ``name``: images float32 ``[C, 20, S, S, 1]`` in [0, 1]."""
        self._check_split_name(name)
        if name not in self._pools:
            indices = self._split_indices(name)
            images = self._all_images()[indices]
            images.flags.writeable = False
            names = self.characters()
            self._pools[name] = ClassPool(name, images, tuple(names[i] for i in indices))
        return self._pools[name]

    def characters(self, archive: str | None = None) -> tuple[str, ...]:
        """All character names (``"Alphabet/characterNN"``), sorted; only ``archive``'s if given.

        Reads the archives' member lists, not the images.
        """
        if archive is not None and archive not in ARCHIVES:
            raise DatasetError(f"Received: archive={archive!r}, expected one of {list(ARCHIVES)} or None.")
        return tuple(c.name for c in self._character_index() if archive is None or c.archive == archive)

    def archive_of(self, character: str) -> str:
        """``"background"`` or ``"evaluation"``: the archive ``character`` comes from."""
        for c in self._character_index():
            if c.name == character:
                return c.archive
        raise DatasetError(f"Received: character={character!r}, which is in neither Omniglot archive under {self.root}.")

    # -- internals ---------------------------------------------------------------------------

    def _character_index(self) -> tuple[_Character, ...]:
        if self._index is None:
            characters = [c for archive in self._archives for c in _index_archive(archive)]
            characters.sort(key=lambda c: c.name)
            for a, b in zip(characters, characters[1:]):
                if a.name == b.name:
                    raise DatasetError(
                        f"Character {a.name!r} is in both images_{a.archive} and images_{b.archive}; "
                        f"the archives under {self.root} are not the official ones. Re-download them from {_SOURCE_URL}."
                    )
            self._index = tuple(characters)
        return self._index

    def _split_indices(self, name: str) -> np.ndarray:
        index = self._character_index()
        if self.split_scheme == "official":
            return np.array([i for i, c in enumerate(index) if c.archive == name], dtype=np.int64)
        if self.split_scheme == "maml":
            n = len(index)
            needed = MAML_TRAIN_CHARACTERS + MAML_VAL_CHARACTERS + 1
            if n < needed:
                raise DatasetError(
                    f"split_scheme='maml' needs at least {needed} characters ({MAML_TRAIN_CHARACTERS} train, "
                    f"{MAML_VAL_CHARACTERS} val, the rest test), but the archives under {self.root} hold {n}. "
                    f"Use the full archives from {_SOURCE_URL}, or split_scheme='official'."
                )
            order = np.random.default_rng(MAML_SEED).permutation(n)
            bounds = {
                "train": (0, MAML_TRAIN_CHARACTERS),
                "val": (MAML_TRAIN_CHARACTERS, MAML_TRAIN_CHARACTERS + MAML_VAL_CHARACTERS),
                "test": (MAML_TRAIN_CHARACTERS + MAML_VAL_CHARACTERS, n),
            }[name]
            return np.sort(order[bounds[0] : bounds[1]])
        if self.split_scheme == "mamlpp":
            n = len(index)
            train_end = int(MAMLPP_FRACTIONS[0] * n)
            val_end = int((MAMLPP_FRACTIONS[0] + MAMLPP_FRACTIONS[1]) * n)
            if not 0 < train_end < val_end < n:
                raise DatasetError(
                    f"split_scheme='mamlpp' cuts {n} characters at fractions {list(MAMLPP_FRACTIONS)} into empty "
                    f"splits; the archives under {self.root} are too small. Use the full archives from {_SOURCE_URL}."
                )
            order = np.arange(n)
            np.random.RandomState(MAMLPP_SEED).shuffle(order)
            bounds = {"train": (0, train_end), "val": (train_end, val_end), "test": (val_end, n)}[name]
            return np.sort(order[bounds[0] : bounds[1]])
        positions = {c.name: i for i, c in enumerate(index)}
        path = _vinyals_dir(self.root) / f"{name}.txt"
        indices = []
        for character in _read_vinyals_split(path):
            if character not in positions:
                raise DatasetError(
                    f"{path} names character {character!r}, which is in neither archive under {self.root}. "
                    f"Use the official archives from {_SOURCE_URL} with the split files from {_VINYALS_SOURCE}."
                )
            indices.append(positions[character])
        return np.sort(np.array(indices, dtype=np.int64))

    def _all_images(self) -> np.ndarray:
        """Every character's images, float32 ``[characters, 20, S, S, 1]``, in ``characters()`` order."""
        if self._images is not None:
            return self._images
        index = self._character_index()
        digests = {archive.name: _archive_digest(archive) for archive in self._archives}
        # The default preprocessing keeps the key it had before the option existed (no cache rebuilt).
        mode = "" if self.preprocess == PREPROCESSING[0] else f" mode={self.preprocess}"
        key = hashlib.sha256(
            "".join(
                [f"omniglot preprocess={PREPROCESS_VERSION} image_size={int(self.image_size)}{mode}\n"]
                + [f"{name} {digest}\n" for name, digest in digests.items()]
            ).encode()
        ).hexdigest()
        cache_root = Path(self.cache_dir) if self.cache_dir is not None else default_cache_dir()
        suffix = "" if not mode else f"-{self.preprocess}"
        path = cache_root / "omniglot" / f"omniglot-{int(self.image_size)}px{suffix}-{key[:16]}.npy"
        expected = {
            "dataset": "omniglot",
            "key": key,
            "preprocess_version": PREPROCESS_VERSION,
            "image_size": int(self.image_size),
            "archive_digests": digests,
            "class_names": [c.name for c in index],
            "archives": [c.archive for c in index],
            **({"preprocess": self.preprocess} if mode else {}),
        }
        images = load_array_cache(path, expected)
        if images is not None:
            logger.info("Loaded Omniglot (%d characters, %dpx) from the cache %s.", len(index), self.image_size, path)
        else:
            logger.info(
                "Decoding Omniglot (%d characters, %d images) at %dpx from %s; cached in %s.",
                len(index), len(index) * IMAGES_PER_CHARACTER, self.image_size, self.root, path,
            )
            images = _decode_characters(self._archives, index, int(self.image_size), self.show_progress, self.preprocess)
            save_array_cache(path, images, expected)
        self._images = images
        return images


@dataclasses.dataclass(frozen=True)
class _Archive:
    """One of the two archives: a zip file, or the folder it extracts to."""

    name: str  # "background" or "evaluation"
    path: Path
    is_zip: bool


@dataclasses.dataclass(frozen=True)
class _Character:
    name: str  # "Alphabet/characterNN"
    archive: str
    members: tuple[str, ...]  # "images_<archive>/<Alphabet>/characterNN/<ID>_<NN>.png", sorted


def _find_archive(root: Path, name: str) -> _Archive:
    zip_path = root / f"images_{name}.zip"
    folder = root / f"images_{name}"
    if zip_path.is_file():
        return _Archive(name, zip_path, True)
    if folder.is_dir():
        return _Archive(name, folder, False)
    raise DatasetError(
        f"Neither {str(zip_path)!r} nor the folder {str(folder)!r} exists. Download images_{name}.zip "
        f"from {_SOURCE_URL} into {str(root)!r}."
    )


def _corrupt_zip(path: Path, err: object) -> DatasetError:
    return DatasetError(
        f"Cannot read {str(path)!r}: {err}. The file is empty, truncated or corrupt; re-download it from "
        f"{_SOURCE_URL} and check its sha256 against the published one."
    )


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        empty = path.stat().st_size == 0
        if not empty:
            return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as err:
        raise _corrupt_zip(path, err) from err
    raise _corrupt_zip(path, "it is empty (0 bytes)")


def _list_members(archive: _Archive) -> list[str]:
    """Names of the archive's files, relative to ``omniglot/`` with ``/`` separators; no directories."""
    if archive.is_zip:
        with _open_zip(archive.path) as zf:
            infos = zf.infolist()
        names = []
        for info in infos:
            _check_member_name(info.filename, archive)
            if info.is_dir():
                continue
            if info.file_size > _MAX_MEMBER_BYTES:
                raise DatasetError(
                    f"{str(archive.path)!r}: member {info.filename!r} is {info.file_size} bytes uncompressed, "
                    f"not an Omniglot PNG. Re-download the archive from {_SOURCE_URL}."
                )
            names.append(info.filename)
        return names
    names = []
    base = archive.path.parent
    for dirpath, dirnames, filenames in os.walk(archive.path):
        dirnames.sort()
        for filename in sorted(filenames):
            names.append(Path(dirpath, filename).relative_to(base).as_posix())
    return names


def _check_member_name(name: str, archive: _Archive) -> None:
    problem = None
    if "\\" in name:
        problem = "contains a backslash"
    elif name.startswith("/") or re.match(r"[A-Za-z]:", name):
        problem = "is an absolute path"
    elif any(part in ("..", ".") for part in name.split("/")):
        problem = "has a '.' or '..' component"
    if problem:
        raise DatasetError(
            f"{str(archive.path)!r}: refusing member {name!r}, which {problem}. This is not the official "
            f"Omniglot archive; re-download it from {_SOURCE_URL}."
        )


def _index_archive(archive: _Archive) -> list[_Character]:
    """The archive's characters, each with exactly 20 members."""
    groups: dict[str, list[str]] = {}
    for member in _list_members(archive):
        match = _MEMBER_PATTERN.fullmatch(member)
        if match is None or match.group(1) != archive.name:
            raise DatasetError(
                f"{str(archive.path)!r}: unexpected member {member!r}; expected "
                f"images_{archive.name}/<Alphabet>/characterNN/<ID>_<NN>.png. Re-download the archive from {_SOURCE_URL}."
            )
        groups.setdefault(f"{match.group(2)}/{match.group(3)}", []).append(member)
    if not groups:
        raise DatasetError(
            f"{str(archive.path)!r} holds no images; expected images_{archive.name}/<Alphabet>/characterNN/*.png. "
            f"Re-download it from {_SOURCE_URL} and check its sha256."
        )
    characters = []
    for name, members in groups.items():
        if len(members) != IMAGES_PER_CHARACTER:
            raise DatasetError(
                f"{str(archive.path)!r}: character {name!r} has {len(members)} images, expected "
                f"{IMAGES_PER_CHARACTER}. Re-download the archive from {_SOURCE_URL}."
            )
        characters.append(_Character(name, archive.name, tuple(sorted(members))))
    return characters


def _archive_digest(archive: _Archive) -> str:
    """sha256 of a zip's bytes, or of a folder's sorted ``relative path, size`` lines."""
    digest = hashlib.sha256()
    if archive.is_zip:
        try:
            with open(archive.path, "rb") as f:
                for chunk in iter(lambda: f.read(2**20), b""):
                    digest.update(chunk)
        except OSError as err:
            raise _corrupt_zip(archive.path, err) from err
        return "zip:" + digest.hexdigest()
    base = archive.path.parent
    for member in sorted(_list_members(archive)):
        digest.update(f"{member}\t{(base / member).stat().st_size}\n".encode())
    return "folder:" + digest.hexdigest()


def _decode_image(data: bytes, image_size: int, preprocess: str = "lanczos_inverted") -> np.ndarray:
    """One PNG's bytes -> float32 ``[S, S]`` in [0, 1]: strokes 1 and background 0 (``"lanczos_inverted"``),
    or 0/1 pixels with strokes 0 (``"nearest_binary"``) or 1 (``"nearest_binary_inverted"``)."""
    with Image.open(io.BytesIO(data)) as image:
        if preprocess in ("nearest_binary", "nearest_binary_inverted"):
            binary = image if image.mode == "1" else image.convert("L").convert("1", dither=Image.Dither.NONE)
            pixels = np.asarray(binary.resize((image_size, image_size), Image.NEAREST).convert("L"), dtype=np.float32) / 255.0
            return 1.0 - pixels if preprocess == "nearest_binary_inverted" else pixels
        gray = image.convert("L").resize((image_size, image_size), Image.LANCZOS)
    return 1.0 - np.asarray(gray, dtype=np.float32) / 255.0


def _decode_characters(
    archives: tuple[_Archive, ...], index: tuple[_Character, ...], image_size: int, show_progress: bool,
    preprocess: str = "lanczos_inverted",
) -> np.ndarray:
    """Decode every character's 20 images into float32 ``[len(index), 20, S, S, 1]``.

    Serial on purpose: the PNGs are ~300 bytes each, so a thread pool only adds overhead (measured
    slower on 2 cores).
    """
    images = np.empty((len(index), IMAGES_PER_CHARACTER, image_size, image_size, 1), dtype=np.float32)
    rows = {name: [] for name in ARCHIVES}
    for row, character in enumerate(index):
        rows[character.archive].append(row)
    with _progress(show_progress) as progress:
        task = progress.add_task("Decoding Omniglot", total=len(index))
        for archive in archives:
            reader = _MemberReader(archive)
            with reader:
                for row in rows[archive.name]:
                    for j, member in enumerate(index[row].members):
                        data = reader.read(member)
                        try:
                            images[row, j, :, :, 0] = _decode_image(data, image_size, preprocess)
                        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as err:
                            raise DatasetError(
                                f"{str(archive.path)!r}: member {member!r} is not a readable PNG ({err}). "
                                f"Re-download the archive from {_SOURCE_URL} and check its sha256."
                            ) from err
                    progress.advance(task)
    return images


class _MemberReader:
    """Reads members' bytes from a zip (opened once) or from an extracted folder."""

    def __init__(self, archive: _Archive):
        self.archive = archive
        self._zip: zipfile.ZipFile | None = None

    def __enter__(self):
        if self.archive.is_zip:
            self._zip = _open_zip(self.archive.path)
        return self

    def __exit__(self, *exc):
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def read(self, member: str) -> bytes:
        if self._zip is None:
            try:
                return (self.archive.path.parent / member).read_bytes()
            except OSError as err:
                raise DatasetError(f"Cannot read {str(self.archive.path.parent / member)!r}: {err}.") from err
        try:
            return self._zip.read(member)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError) as err:
            raise _corrupt_zip(self.archive.path, f"member {member!r}: {err}") from err


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


def _vinyals_dir(root: Path) -> Path:
    return root / "splits" / "vinyals"


def _check_vinyals_files(root: Path) -> None:
    folder = _vinyals_dir(root)
    missing = [f"{split}.txt" for split in VINYALS_SPLITS if not (folder / f"{split}.txt").is_file()]
    if missing:
        raise DatasetError(
            f"split_scheme='vinyals' needs {', '.join(missing)} in {str(folder)!r}; copy train.txt, val.txt, "
            f"test.txt and trainval.txt from {_VINYALS_SOURCE} there."
        )


def _read_vinyals_split(path: Path) -> list[str]:
    """The characters a Vinyals split file names, each once, in order of first appearance."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"Cannot read the split file {str(path)!r}: {err}. Copy it again from {_VINYALS_SOURCE}.") from err
    characters: dict[str, None] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        match = _VINYALS_LINE.fullmatch(line)
        if match is None:
            raise DatasetError(
                f"{str(path)!r} line {number}: {line!r} is not '<Alphabet>/characterNN/rotDDD' "
                f"(DDD one of 000, 090, 180, 270). Copy the file again from {_VINYALS_SOURCE}."
            )
        characters[f"{match.group(1)}/{match.group(2)}"] = None
    if not characters:
        raise DatasetError(f"The split file {str(path)!r} names no characters. Copy it again from {_VINYALS_SOURCE}.")
    return list(characters)
