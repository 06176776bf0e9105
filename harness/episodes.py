"""Seeded N-way K-shot episodes and fixed, fingerprinted evaluation sets.

An episode is stored as indices (which classes, which rotation, which images), never as pixels, so a
set of 600 episodes is a few kilobytes, can be exported for another tool, and hashes to a
fingerprint. Two results are comparable (pairable episode by episode) only when their fingerprints
match.

Shapes used throughout, for a set of ``E`` episodes of ``N`` ways, ``K`` shots and ``Q`` queries:
``classes [E, N]``, ``rotations [E, N]`` (quarter turns, 0-3), ``support [E, N, K]`` and
``query [E, N, Q]`` (image indices within each class). A materialized batch holds
``support_x [B, N*K, H, W, C]``, ``support_y [B, N*K]`` (labels 0..N-1), ``query_x [B, N*Q, H, W, C]``,
``query_y [B, N*Q]`` and ``label_set [B, N]`` (0..N-1: the episode's labels, so ``N`` is static).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from metabench.datasets.base import ClassPool, RegressionTaskFamily, RegressionTasks

ROTATION_MODES = ("per_task", "classes", "none")


class EpisodeError(ValueError):
    """An episode specification that the data cannot satisfy, or an unreadable episode file."""


@dataclasses.dataclass(frozen=True)
class EpisodeSpec:
    """The shape of an episode.

    Args:
        ways: classes per episode (``None`` for regression tasks).
        shots: support examples per class (regression: support points per task).
        queries: query examples per class (regression: query points per task).
    """

    ways: int | None
    shots: int
    queries: int

    def __post_init__(self):
        for name in ("ways", "shots", "queries"):
            value = getattr(self, name)
            if name == "ways" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise EpisodeError(f"Received {name}={value!r}; expected a positive integer.")
        if self.ways is not None and self.ways < 2:
            raise EpisodeError(f"Received ways={self.ways}; a classification episode needs at least 2 ways.")

    def describe(self) -> str:
        if self.ways is None:
            return f"{self.shots}-shot ({self.queries} queries)"
        return f"{self.ways}-way {self.shots}-shot ({self.queries} queries per class)"


@dataclasses.dataclass(frozen=True)
class ClassificationEpisodes:
    """A list of classification episodes as indices into one ``ClassPool`` (shapes in the module doc)."""

    classes: np.ndarray
    rotations: np.ndarray
    support: np.ndarray
    query: np.ndarray

    def __len__(self) -> int:
        return int(self.classes.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        return {"classes": self.classes, "rotations": self.rotations, "support": self.support, "query": self.query}


def check_classification_spec(pool: ClassPool, spec: EpisodeSpec, rotations: str, dataset: str) -> None:
    """Raise ``EpisodeError`` when ``pool`` cannot provide episodes of shape ``spec``."""
    if rotations not in ROTATION_MODES:
        raise EpisodeError(f"Received rotations={rotations!r}; expected one of {list(ROTATION_MODES)}.")
    if spec.ways is None:
        raise EpisodeError(f"{dataset} is a classification dataset; set ways to a positive integer.")
    available = pool.num_classes * (4 if rotations == "classes" else 1)
    if spec.ways > available:
        unit = "classes (characters x 4 rotations)" if rotations == "classes" else "classes"
        raise EpisodeError(
            f"Received ways={spec.ways}, but split {pool.name!r} of {dataset} has {available} {unit}. "
            f"Use ways <= {available} or a larger split."
        )
    needed = spec.shots + spec.queries
    if needed > pool.images_per_class:
        raise EpisodeError(
            f"Received shots={spec.shots} and queries={spec.queries} ({needed} images per class), but "
            f"split {pool.name!r} of {dataset} has {pool.images_per_class} images per class. "
            f"Use shots + queries <= {pool.images_per_class}."
        )


def sample_classification_episodes(
    pool: ClassPool, spec: EpisodeSpec, num_episodes: int, rng: np.random.Generator, rotations: str = "none"
) -> ClassificationEpisodes:
    """Draw ``num_episodes`` episodes: distinct classes per episode, disjoint support and query images.

    ``rotations``: ``"per_task"`` turns each class of an episode by a random multiple of 90 degrees
    (the MAML code's protocol), ``"classes"`` treats each (class, rotation) pair as a class of its own
    (Santoro et al.), ``"none"`` keeps images upright.
    """
    n, k, q = spec.ways, spec.shots, spec.queries
    classes = np.empty((num_episodes, n), dtype=np.int64)
    turns = np.zeros((num_episodes, n), dtype=np.int64)
    for e in range(num_episodes):
        if rotations == "classes":
            # Each (class, quarter turn) pair is a class of its own, so one character may appear at two turns.
            virtual = rng.choice(pool.num_classes * 4, size=n, replace=False)
            classes[e], turns[e] = virtual // 4, virtual % 4
        else:
            classes[e] = rng.choice(pool.num_classes, size=n, replace=False)
            if rotations == "per_task":
                turns[e] = rng.integers(0, 4, size=n)
    support, query = sample_image_indices(rng, num_episodes, n, pool.images_per_class, k, q)
    return ClassificationEpisodes(classes=classes, rotations=turns, support=support, query=query)


def sample_image_indices(rng: np.random.Generator, episodes: int, ways: int, images_per_class: int, shots: int, queries: int):
    """Distinct image indices per (episode, class): ``support [E, N, K]`` and ``query [E, N, Q]``, disjoint."""
    images = np.argsort(rng.random((episodes, ways, images_per_class)), axis=-1)[..., : shots + queries]
    return images[..., :shots], images[..., shots:]


def materialize_classification(pool: ClassPool, episodes: ClassificationEpisodes, index=slice(None)) -> dict:
    """Pixels and labels for ``episodes[index]`` as float32/int32 arrays (shapes in the module doc)."""
    classes = episodes.classes[index]
    turns = episodes.rotations[index]
    batch, ways = classes.shape

    def gather(image_indices):
        per_class = image_indices.shape[-1]
        x = pool.gather(classes.reshape(-1), image_indices.reshape(-1, per_class))
        x = x.reshape(batch, ways, per_class, *pool.image_shape)
        for quarter in (1, 2, 3):
            mask = turns == quarter
            if mask.any():
                x[mask] = np.rot90(x[mask], k=quarter, axes=(2, 3))
        labels = np.broadcast_to(np.arange(ways, dtype=np.int32)[None, :, None], (batch, ways, per_class))
        return x.reshape(batch, ways * per_class, *pool.image_shape), labels.reshape(batch, ways * per_class)

    support_x, support_y = gather(episodes.support[index])
    query_x, query_y = gather(episodes.query[index])
    label_set = np.broadcast_to(np.arange(ways, dtype=np.int32), (batch, ways)).copy()
    return {"support_x": support_x, "support_y": support_y, "query_x": query_x, "query_y": query_y, "label_set": label_set}


def regression_batch(tasks: RegressionTasks, index=slice(None)) -> dict:
    """The support/query arrays of ``tasks[index]`` in the batch layout of ``materialize_classification``."""
    return {
        "support_x": tasks.support_x[index],
        "support_y": tasks.support_y[index],
        "query_x": tasks.query_x[index],
        "query_y": tasks.query_y[index],
    }


@dataclasses.dataclass(frozen=True)
class EvaluationSet:
    """A fixed, fingerprinted list of evaluation episodes, identical for every algorithm.

    Attributes:
        dataset: registered dataset name.
        split: split the episodes come from.
        spec: the episode shape.
        seed: the seed it was derived from.
        episodes: ``ClassificationEpisodes`` or ``RegressionTasks``.
        pool_digest: sha256 of the split's class names (classification) or ``""``; part of the
            fingerprint, so indices into a different pool never pair.
        inputs: how the indices become what a model sees (classification): the dataset table of
            the config (name and every option, e.g. ``image_size``) and the loader's
            ``preprocess_version`` (:func:`input_description`). Part of the fingerprint, so the
            same indices at 28 and at 14 pixels are two evaluation sets. ``{}`` for regression,
            whose episodes hold the input values themselves.
    """

    dataset: str
    split: str
    spec: EpisodeSpec
    seed: int
    episodes: ClassificationEpisodes | RegressionTasks
    rotations: str = "none"
    pool_digest: str = ""
    inputs: dict = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        if isinstance(self.episodes, RegressionTasks):
            return int(self.episodes.params.shape[0])
        return len(self.episodes)

    @property
    def kind(self) -> str:
        return "regression" if isinstance(self.episodes, RegressionTasks) else "classification"

    def _arrays(self) -> dict[str, np.ndarray]:
        if isinstance(self.episodes, RegressionTasks):
            return {f.name: getattr(self.episodes, f.name) for f in dataclasses.fields(RegressionTasks)}
        return self.episodes.arrays()

    @property
    def index_digest(self) -> str:
        """sha256 (hex) over the dataset, split, spec, rotation mode, pool digest and every index or value."""
        digest = hashlib.sha256()
        header = {
            "dataset": self.dataset,
            "split": self.split,
            "ways": self.spec.ways,
            "shots": self.spec.shots,
            "queries": self.spec.queries,
            "rotations": self.rotations,
            "pool": self.pool_digest,
        }
        digest.update(json.dumps(header, sort_keys=True).encode())
        for name, array in sorted(self._arrays().items()):
            digest.update(name.encode())
            contiguous = np.ascontiguousarray(array)
            digest.update(str(contiguous.dtype).encode() + str(contiguous.shape).encode())
            digest.update(contiguous.tobytes())
        return digest.hexdigest()

    @property
    def fingerprint(self) -> str:
        """The evaluation set's identity: :func:`compose_fingerprint` of the index digest and the inputs."""
        return compose_fingerprint(self.index_digest, self.inputs)

    def batches(self, batch_size: int, pool: ClassPool | None = None):
        """Yield materialized batches of at most ``batch_size`` episodes, in order."""
        for start in range(0, len(self), batch_size):
            index = slice(start, min(start + batch_size, len(self)))
            if isinstance(self.episodes, RegressionTasks):
                yield regression_batch(self.episodes, index)
            else:
                yield materialize_classification(pool, self.episodes, index)

    def save(self, path: str | Path) -> Path:
        """Write the set to ``path`` (``.npz`` or ``.json``); no pickle either way."""
        path = Path(path)
        meta = {
            "format": "metabench-episodes/1",
            "kind": self.kind,
            "dataset": self.dataset,
            "split": self.split,
            "ways": self.spec.ways,
            "shots": self.spec.shots,
            "queries": self.spec.queries,
            "seed": self.seed,
            "rotations": self.rotations,
            "pool_digest": self.pool_digest,
            "inputs": self.inputs,
            "fingerprint": self.fingerprint,
        }
        arrays = self._arrays()
        if path.suffix == ".npz":
            np.savez(path, meta=np.array(json.dumps(meta)), **arrays)
        elif path.suffix == ".json":
            payload = dict(meta, arrays={k: {"dtype": str(v.dtype), "data": v.tolist()} for k, v in arrays.items()})
            path.write_text(json.dumps(payload))
        else:
            raise EpisodeError(f"Received path {str(path)!r}; episode files end in .npz or .json.")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "EvaluationSet":
        """Read a set written by ``save`` and check its stored fingerprint."""
        path = Path(path)
        try:
            if path.suffix == ".npz":
                with np.load(path, allow_pickle=False) as data:
                    meta = json.loads(str(data["meta"]))
                    arrays = {k: data[k] for k in data.files if k != "meta"}
            elif path.suffix == ".json":
                payload = json.loads(path.read_text())
                meta = {k: v for k, v in payload.items() if k != "arrays"}
                arrays = {k: np.asarray(v["data"], dtype=v["dtype"]) for k, v in payload["arrays"].items()}
            else:
                raise EpisodeError(f"Received path {str(path)!r}; episode files end in .npz or .json.")
            if meta.get("format") != "metabench-episodes/1":
                raise EpisodeError(f"{str(path)!r} is not a metabench episode file (format {meta.get('format')!r}).")
            spec = EpisodeSpec(meta["ways"], meta["shots"], meta["queries"])
            if meta["kind"] == "regression":
                episodes = RegressionTasks(**arrays)
            else:
                episodes = ClassificationEpisodes(**arrays)
        except (OSError, ValueError, KeyError, TypeError) as error:
            if isinstance(error, EpisodeError):
                raise
            raise EpisodeError(f"Cannot read episode file {str(path)!r}: {error}") from error
        loaded = cls(meta["dataset"], meta["split"], spec, meta["seed"], episodes, meta["rotations"], meta["pool_digest"],
                     meta.get("inputs") or {})
        if loaded.fingerprint != meta["fingerprint"]:
            raise EpisodeError(
                f"Episode file {str(path)!r} says fingerprint {meta['fingerprint'][:12]} but its episodes hash "
                f"to {loaded.fingerprint[:12]}: the file was edited or damaged."
            )
        return loaded


def input_description(dataset_table: dict, preprocess_version: int) -> dict:
    """What turns a classification set's indices into model inputs: ``{"dataset": {name, options...},
    "preprocess_version": N}`` (``dataset_table`` is the config's ``[dataset]`` table)."""
    return {"dataset": dict(sorted(dataset_table.items())), "preprocess_version": int(preprocess_version)}


def compose_fingerprint(index_digest: str, inputs: dict) -> str:
    """The fingerprint of a set with ``index_digest`` whose indices become inputs as ``inputs`` says.

    ``index_digest`` itself when ``inputs`` is empty (regression sets hold their values); else the
    sha256 hex of ``"metabench-evaluation-set/2\n" + index_digest + "\n" + canonical JSON of
    inputs`` (sorted keys, separators ``,`` and ``:``). Composed this way, a store written before
    inputs were part of the identity is migrated from each run's stored config alone.
    """
    if not inputs:
        return index_digest
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"metabench-evaluation-set/2\n{index_digest}\n{canonical}".encode()).hexdigest()


def pool_digest(pool: ClassPool) -> str:
    """sha256 of a pool's class names, so episodes index the same classes wherever they are used."""
    return hashlib.sha256("\n".join(pool.class_names).encode()).hexdigest()


def classification_evaluation_set(
    dataset: str, pool: ClassPool, spec: EpisodeSpec, num_episodes: int, seed: int, rotations: str = "none",
    inputs: dict | None = None,
) -> EvaluationSet:
    """The fixed evaluation episodes of (dataset, split, spec, seed, rotations): the same on every
    machine. ``inputs``: :func:`input_description` of the dataset, part of the fingerprint."""
    check_classification_spec(pool, spec, rotations, dataset)
    episodes = sample_classification_episodes(pool, spec, num_episodes, np.random.default_rng(seed), rotations)
    return EvaluationSet(dataset, pool.name, spec, seed, episodes, rotations, pool_digest(pool), dict(inputs or {}))


def regression_evaluation_set(
    family: RegressionTaskFamily, spec: EpisodeSpec, num_episodes: int, seed: int, split: str = "test"
) -> EvaluationSet:
    """Fixed regression tasks drawn from ``family`` with ``seed``."""
    tasks = family.sample(np.random.default_rng(seed), num_episodes, spec.shots, spec.queries)
    return EvaluationSet(family.name, split, spec, seed, tasks)


def training_rng(seed: int, iteration: int) -> np.random.Generator:
    """The generator for meta-iteration ``iteration``: training data depend only on (seed, iteration),
    so a resumed run draws exactly the episodes the uninterrupted run would have drawn."""
    return np.random.default_rng([seed, iteration])
