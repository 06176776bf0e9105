"""What every dataset hands to the episode sampler: class pools for classification, task draws for regression.

A dataset knows its classes and images (or, for regression, how to draw a task) and nothing about
episodes, algorithms or storage.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import platformdirs

from metabench.harness.errors import MetabenchError

DATA_DIR_ENV = "METABENCH_DATA"


class DatasetError(MetabenchError, ValueError):
    """A dataset cannot be read as asked: missing files, a corrupt archive, an unknown split."""


@dataclasses.dataclass(frozen=True)
class ClassPool:
    """The images of one split, grouped by class.

    Args:
        name: the split's name, e.g. ``"test"``.
        images: array ``[num_classes, images_per_class, height, width, channels]``. Either float32
            in [0, 1] or uint8 in [0, 255] (large datasets keep uint8 in memory); ``gather``
            always returns float32 in [0, 1].
        class_names: one name per class, e.g. ``"Greek/character05"``.
    """

    name: str
    images: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self):
        if self.images.ndim != 5:
            raise DatasetError(
                f"ClassPool images must be [classes, images_per_class, H, W, C]; "
                f"received shape {self.images.shape} for split {self.name!r}."
            )
        if len(self.class_names) != self.images.shape[0]:
            raise DatasetError(
                f"ClassPool {self.name!r} has {self.images.shape[0]} classes of images but "
                f"{len(self.class_names)} class names."
            )

    @property
    def num_classes(self) -> int:
        return int(self.images.shape[0])

    @property
    def images_per_class(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.images.shape[2:])

    def gather(self, class_indices: np.ndarray, image_indices: np.ndarray) -> np.ndarray:
        """Images for ``class_indices [n]`` and ``image_indices [n, m]`` as float32 ``[n, m, H, W, C]``."""
        class_indices = np.asarray(class_indices)
        picked = self.images[class_indices[:, None], np.asarray(image_indices)]
        if picked.dtype == np.uint8:
            return picked.astype(np.float32) / 255.0
        return picked.astype(np.float32, copy=False)


class ClassificationDataset:
    """Base class of image datasets: a name and named class pools.

    Subclasses set ``name`` and implement ``split_names`` and ``split``. ``preprocess_version``
    names how files become pixels; a loader that changes that (resizing, inversion, dtype) bumps it,
    so evaluation sets decoded the old way and the new way never share an identity.
    """

    name: str = ""
    kind = "classification"
    preprocess_version: int = 1

    def split_names(self) -> tuple[str, ...]:
        raise NotImplementedError

    def split(self, name: str) -> ClassPool:
        raise NotImplementedError

    def _check_split_name(self, name: str) -> None:
        if name not in self.split_names():
            raise DatasetError(
                f"Received split={name!r}, but {self.name} has splits {list(self.split_names())}."
            )


@dataclasses.dataclass(frozen=True)
class RegressionTasks:
    """A batch of regression tasks; every array has a leading task axis ``T``.

    Attributes:
        params: ``[T, P]`` float32, the task parameters (sinusoid: amplitude, phase).
        support_x, support_y: ``[T, K, in_dim]`` and ``[T, K, out_dim]`` float32.
        query_x, query_y: ``[T, Q, in_dim]`` and ``[T, Q, out_dim]`` float32.
    """

    params: np.ndarray
    support_x: np.ndarray
    support_y: np.ndarray
    query_x: np.ndarray
    query_y: np.ndarray


class RegressionTaskFamily:
    """Base class of regression task families: draws tasks from a seeded generator."""

    name: str = ""
    kind = "regression"
    input_dim: int = 1
    output_dim: int = 1

    def sample(
        self, rng: np.random.Generator, num_tasks: int, num_support: int, num_query: int
    ) -> RegressionTasks:
        raise NotImplementedError

    def sample_inputs(self, rng: np.random.Generator, num_tasks: int, num_points: int) -> np.ndarray:
        """Inputs ``[num_tasks, num_points, input_dim]`` float32 drawn from the family's input distribution."""
        raise NotImplementedError

    def targets(self, params: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Exact outputs ``[T, N, out_dim]`` of tasks ``params [T, P]`` at inputs ``x [T, N, in_dim]``."""
        raise NotImplementedError


def resolve_data_dir(data_dir: str | os.PathLike | None, dataset: str, expected: str) -> Path:
    """The folder holding ``dataset``'s files: ``data_dir`` if given, else ``$METABENCH_DATA``.

    Returns ``<data dir>/<dataset>``. ``expected`` describes the files that should be there, for
    the error message.
    """
    root = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    if not root:
        raise DatasetError(
            f"No data directory given for {dataset}. Pass --data-dir DIR (or set "
            f"{DATA_DIR_ENV}=DIR) where DIR/{dataset}/ holds {expected}."
        )
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"Data directory {str(root)!r} does not exist; expected DIR/{dataset}/ with {expected}.")
    if not root.is_dir():
        raise DatasetError(f"Data directory {str(root)!r} is a file, not a directory; pass the folder that holds {dataset}/.")
    folder = root / dataset
    if not folder.is_dir():
        raise DatasetError(
            f"Data directory {str(root)!r} has no {dataset}/ folder; expected {str(folder)!r} with {expected}."
        )
    return folder


def default_cache_dir() -> Path:
    """Where decoded datasets are cached: ``$METABENCH_CACHE`` or the user's cache dir."""
    env = os.environ.get("METABENCH_CACHE")
    if env:
        return Path(env).expanduser()

    return Path(platformdirs.user_cache_dir("metabench"))


# --- Decoded-array cache, shared by the image datasets -------------------------------------------
#
# A cache entry is ``<name>.npy`` (``np.save``, never pickled) plus a ``<name>.json`` sidecar that
# holds the cache key, the class names and the array's shape and dtype. Both are written to a temp
# file and moved into place with ``os.replace``, so a reader never sees half a file.

_cache_logger = logging.getLogger(__name__)


def load_array_cache(path: Path, expected: dict) -> np.ndarray | None:
    """The array cached at ``path`` (a ``.npy`` file), or ``None`` when it must be rebuilt.

    The sidecar ``path.with_suffix(".json")`` must hold every item of ``expected`` (JSON values,
    e.g. ``{"key": ..., "class_names": [...]}``) unchanged, and the array's shape and dtype must be
    the ones the sidecar records. A missing entry returns ``None`` quietly; a stale or corrupt one
    logs a warning and returns ``None``. The array is loaded with ``allow_pickle=False``.
    """
    path = Path(path)
    sidecar = path.with_suffix(".json")
    if not path.exists() and not sidecar.exists():
        return None
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            raise ValueError("the sidecar is not a JSON object")
        wanted = json.loads(json.dumps(expected))
        stale = sorted(k for k, v in wanted.items() if meta.get(k) != v)
        if stale:
            _cache_logger.warning("Cache %s is stale (%s changed); rebuilding it.", path, ", ".join(stale))
            return None
        array = np.load(path, allow_pickle=False)
        if list(array.shape) != meta.get("shape") or str(array.dtype) != meta.get("dtype"):
            _cache_logger.warning(
                "Cache %s holds shape %s %s, but its sidecar says %s %s; rebuilding it.",
                path, list(array.shape), array.dtype, meta.get("shape"), meta.get("dtype"),
            )
            return None
    except (OSError, ValueError, EOFError) as err:
        _cache_logger.warning("Cache %s is unreadable (%s); rebuilding it.", path, err)
        return None
    return array


def save_array_cache(path: Path, array: np.ndarray, meta: dict) -> bool:
    """Write ``array`` to ``path`` (``.npy``) and ``meta`` plus its shape and dtype to the sidecar.

    Each file is written to a temp file in the same folder and moved into place atomically. A
    cache folder that cannot be written (read-only, full disk) logs a warning and returns
    ``False``; the caller goes on with the array in memory.
    """
    path = Path(path)
    meta = {**meta, "shape": list(array.shape), "dtype": str(array.dtype)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))
        text = json.dumps(meta, indent=1).encode("utf-8")
        _atomic_write(path.with_suffix(".json"), lambda f: f.write(text))
    except OSError as err:
        _cache_logger.warning("Could not write the cache %s (%s); continuing without it.", path, err)
        return False
    return True


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
