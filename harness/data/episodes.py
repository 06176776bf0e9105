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
import re
from pathlib import Path

import numpy as np

from metabench.datasets.base import ClassPool, RegressionTaskFamily, RegressionTasks
from metabench.harness.config import without_neutral
from metabench.harness.errors import MetabenchError

ROTATION_MODES = ("per_task", "classes", "none")
EPISODE_FORMAT = "metabench-episodes/1"
"""The ``format`` field of every episode file (``docs/episode-format.md``)."""

CLASSIFICATION_ARRAYS = ("classes", "rotations", "support", "query")
REGRESSION_ARRAYS = ("params", "support_x", "support_y", "query_x", "query_y")
ARRIVALS = "arrivals"
"""The optional array of a prequential set: ``arrivals [E, S]``, the order its support examples arrive in."""
ARRIVAL_STREAM = 0x70726571  # b"preq": the arrival orders' own stream of the evaluation seed
RULES = (
    "format", "meta", "arrays", "dtype", "shape", "class-range", "rotation-range", "rotation-none", "image-range",
    "distinct-classes", "distinct-support", "distinct-query", "support-query-disjoint", "finite", "arrivals", "fingerprint",
    "inputs", "pool",
)
"""Names of the rules an episode file must meet, in the order they are checked (``docs/episode-format.md``);
``inputs`` and ``pool`` are checked against the data (``metabench episodes verify --data-dir``)."""
_HEX64 = re.compile(r"[0-9a-f]{64}")


class EpisodeError(MetabenchError, ValueError):
    """An episode specification that the data cannot satisfy, or an unreadable episode file."""


class EpisodeFileError(EpisodeError):
    """An episode file (or set) that breaks a rule of ``docs/episode-format.md``.

    Attributes:
        rule: the rule's name, e.g. ``"support-query-disjoint"``.
        episode: index of the first episode that breaks it, or ``None`` for a rule about the whole file.
    """

    def __init__(self, message: str, rule: str, episode: int | None = None):
        super().__init__(message)
        self.rule = rule
        self.episode = episode


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

    The file form (``save``/``load``, ``metabench episodes export``/``verify``) is specified byte for
    byte in ``docs/episode-format.md``; ``load`` checks every rule listed there.

    Attributes:
        dataset: registered dataset name.
        split: split the episodes come from.
        spec: the episode shape.
        seed: the seed it was derived from (recorded, not part of the fingerprint: the episodes are).
        episodes: ``ClassificationEpisodes`` or ``RegressionTasks``.
        rotations: the rotation mode the episodes were drawn with (one of ``ROTATION_MODES``).
        pool_digest: sha256 of the split's class names (classification) or ``""``; part of the
            fingerprint, so indices into a different pool never pair.
        inputs: how the indices become what a model sees (classification): the dataset table of
            the config (name and every option, e.g. ``image_size``) and the loader's
            ``preprocess_version`` (:func:`input_description`). Part of the fingerprint, so the
            same indices at 28 and at 14 pixels are two evaluation sets. ``{}`` for regression,
            whose episodes hold the input values themselves.
        num_classes, images_per_class: size of the pool the indices point into (classification,
            ``None`` when unknown); stored in the file so that ``load`` checks every index is in
            range. Not part of the fingerprint (``pool_digest`` names the pool).
        arrivals: ``None``, or for prequential evaluation (``evaluation.prequential``) the order
            the support examples of each episode arrive in, ``[E, S]`` int64 (:func:`arrival_order`):
            ``arrivals[e, i]`` is the support row (``n * K + k``; regression: the point) that
            arrives i-th. An array of the set, so part of its fingerprint; ``None`` leaves the
            fingerprint as it was before prequential evaluation existed.
    """

    dataset: str
    split: str
    spec: EpisodeSpec
    seed: int
    episodes: ClassificationEpisodes | RegressionTasks
    rotations: str = "none"
    pool_digest: str = ""
    inputs: dict = dataclasses.field(default_factory=dict)
    num_classes: int | None = None
    images_per_class: int | None = None
    arrivals: np.ndarray | None = None

    def __len__(self) -> int:
        if isinstance(self.episodes, RegressionTasks):
            return int(self.episodes.params.shape[0])
        return len(self.episodes)

    @property
    def kind(self) -> str:
        return "regression" if isinstance(self.episodes, RegressionTasks) else "classification"

    def _arrays(self) -> dict[str, np.ndarray]:
        if isinstance(self.episodes, RegressionTasks):
            arrays = {f.name: getattr(self.episodes, f.name) for f in dataclasses.fields(RegressionTasks)}
        else:
            arrays = self.episodes.arrays()
        if self.arrivals is not None:
            arrays[ARRIVALS] = self.arrivals
        return arrays

    @property
    def support_size(self) -> int:
        """S, the support examples of one episode: N * K (classification) or K (regression)."""
        return self.spec.shots * (self.spec.ways or 1)

    @property
    def warmup(self) -> int:
        """How many arrivals come before the first scored one: N (one per class) or 1 (regression)."""
        return arrival_warmup(self.spec)

    def with_arrivals(self) -> "EvaluationSet":
        """This set with its seeded arrival order (:func:`arrival_order` of its spec, size and seed):
        the set a prequential evaluation runs on, with its own fingerprint."""
        return dataclasses.replace(self, arrivals=arrival_order(self.spec, len(self), self.seed))

    def without_arrivals(self) -> "EvaluationSet":
        """The same episodes without an arrival order: the set of the plain (whole-support) evaluation."""
        return dataclasses.replace(self, arrivals=None)

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

    def identity(self) -> dict:
        """What ``metabench episodes export`` and ``verify`` print: fingerprint, dataset, split, spec, count."""
        return {
            "fingerprint": self.fingerprint,
            "index_digest": self.index_digest,
            "kind": self.kind,
            "dataset": self.dataset,
            "split": self.split,
            "spec": self.spec.describe(),
            "ways": self.spec.ways,
            "shots": self.spec.shots,
            "queries": self.spec.queries,
            "rotations": self.rotations,
            "episodes": len(self),
            "seed": self.seed,
            "pool_digest": self.pool_digest,
            "inputs": self.inputs,
            "num_classes": self.num_classes,
            "images_per_class": self.images_per_class,
            **({"prequential": True} if self.arrivals is not None else {}),
        }

    def validate(self, where: str | None = None) -> None:
        """Check every invariant of ``docs/episode-format.md`` except the stored fingerprint.

        Raises:
            EpisodeFileError: naming the first broken rule (in the order the doc lists them) and
                the first episode that breaks it.
        """
        where = where or f"Evaluation set {self.dataset}/{self.split}"
        if isinstance(self.episodes, RegressionTasks):
            _check_regression(where, self.spec, self._arrays())
        else:
            _check_classification(where, self.spec, self.rotations, self._arrays(), self.num_classes, self.images_per_class)
        if self.arrivals is not None:
            _check_arrivals(where, self.spec, self.arrivals, len(self))

    def batches(self, batch_size: int, pool: ClassPool | None = None):
        """Yield materialized batches of at most ``batch_size`` episodes, in order."""
        for start in range(0, len(self), batch_size):
            index = slice(start, min(start + batch_size, len(self)))
            if isinstance(self.episodes, RegressionTasks):
                yield regression_batch(self.episodes, index)
            else:
                yield materialize_classification(pool, self.episodes, index)

    def save(self, path: str | Path) -> Path:
        """Write the set to ``path`` (``.npz`` or ``.json``, no pickle either way) after ``validate``."""
        path = Path(path)
        if path.suffix not in (".npz", ".json"):
            raise EpisodeError(f"Received path {str(path)!r}; episode files end in .npz or .json.")
        self.validate()
        meta = {
            "format": EPISODE_FORMAT,
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
        }
        if self.kind == "classification":
            for key in ("num_classes", "images_per_class"):
                if getattr(self, key) is not None:
                    meta[key] = int(getattr(self, key))
        meta.update(episodes=len(self), fingerprint=self.fingerprint)
        arrays = self._arrays()
        if path.suffix == ".npz":
            np.savez(path, meta=np.array(json.dumps(meta)), **arrays)
        else:
            payload = dict(meta, arrays={k: {"dtype": str(v.dtype), "data": v.tolist()} for k, v in arrays.items()})
            path.write_text(json.dumps(payload))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "EvaluationSet":
        """Read a set written by ``save``, checking every rule of ``docs/episode-format.md``.

        Raises:
            EpisodeFileError: (an ``EpisodeError``) the file is unreadable or breaks a rule; the
                message names the rule and, for a rule about episodes, the first episode breaking it.
        """
        path = Path(path)
        where = f"Episode file {str(path)!r}"
        meta, arrays = _read_episode_file(path, where)
        _check_meta(where, meta)
        spec = EpisodeSpec(meta["ways"], meta["shots"], meta["queries"])
        kind = meta["kind"]
        names = REGRESSION_ARRAYS if kind == "regression" else CLASSIFICATION_ARRAYS
        if sorted(set(arrays) - {ARRIVALS}) != sorted(names):
            raise EpisodeFileError(
                f"{where} breaks rule 'arrays': a {kind} file holds exactly the arrays {sorted(names)} (and, for "
                f"prequential evaluation, {ARRIVALS!r}); it holds {sorted(arrays)}.", "arrays",
            )
        arrivals = arrays.pop(ARRIVALS, None)
        episodes = RegressionTasks(**arrays) if kind == "regression" else ClassificationEpisodes(**arrays)
        loaded = cls(
            meta["dataset"], meta["split"], spec, meta["seed"], episodes, meta["rotations"], meta["pool_digest"],
            meta.get("inputs") or {}, meta.get("num_classes"), meta.get("images_per_class"), arrivals,
        )
        loaded.validate(where)
        if meta.get("episodes") is not None and meta["episodes"] != len(loaded):
            raise EpisodeFileError(
                f"{where} breaks rule 'shape': its meta says {meta['episodes']} episodes but its arrays hold "
                f"{len(loaded)}.", "shape",
            )
        if loaded.fingerprint != meta["fingerprint"]:
            raise EpisodeFileError(
                f"{where} breaks rule 'fingerprint': it says fingerprint {meta['fingerprint'][:12]} but its episodes "
                f"hash to {loaded.fingerprint[:12]}: the file was edited or damaged.", "fingerprint",
            )
        return loaded


def check_against_pool(eval_set: EvaluationSet, pool: ClassPool, where: str, source: str) -> None:
    """Check that ``eval_set``'s indices point into ``pool`` (the split as the data has it today).

    ``source`` says where the pool came from, for the message. Raises ``EpisodeFileError`` (rule
    ``"pool"``) when the pool digest or the pool size differ, or a range rule when an index is
    outside the pool.
    """
    actual = pool_digest(pool)
    if actual != eval_set.pool_digest:
        raise EpisodeFileError(
            f"{where} breaks rule 'pool': its pool digest {eval_set.pool_digest[:12]} is not the digest of split "
            f"{pool.name!r} in {source} ({actual[:12]}, {pool.num_classes} classes): the split's class names or "
            f"their order differ, so its indices would pick other classes.", "pool",
        )
    for key, value in (("num_classes", pool.num_classes), ("images_per_class", pool.images_per_class)):
        stored = getattr(eval_set, key)
        if stored is not None and stored != value:
            raise EpisodeFileError(
                f"{where} breaks rule 'pool': it says {key}={stored}, but split {pool.name!r} in {source} has "
                f"{key}={value}.", "pool",
            )
    dataclasses.replace(eval_set, num_classes=pool.num_classes, images_per_class=pool.images_per_class).validate(where)


def _read_episode_file(path: Path, where: str) -> tuple[dict, dict[str, np.ndarray]]:
    """The meta dict and the arrays of an ``.npz`` or ``.json`` episode file; rule ``"format"`` or ``"dtype"``."""
    if path.suffix not in (".npz", ".json"):
        raise EpisodeFileError(f"{where} breaks rule 'format': episode files end in .npz or .json.", "format")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                if "meta" not in data.files:
                    raise EpisodeFileError(f"{where} breaks rule 'format': it has no 'meta' entry.", "format")
                meta = json.loads(str(data["meta"]))
                arrays = {k: data[k] for k in data.files if k != "meta"}
        else:
            payload = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(payload, dict) or not isinstance(payload.get("arrays"), dict):
                raise EpisodeFileError(f"{where} breaks rule 'format': it is not a JSON object with an 'arrays' object.",
                                       "format")
            meta = {k: v for k, v in payload.items() if k != "arrays"}
            arrays = {name: _json_array(where, name, entry) for name, entry in payload["arrays"].items()}
    except EpisodeFileError:
        raise
    except (OSError, ValueError, KeyError, TypeError, EOFError) as error:
        raise EpisodeFileError(f"{where} breaks rule 'format': it cannot be read ({error}).", "format") from error
    if not isinstance(meta, dict) or meta.get("format") != EPISODE_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise EpisodeFileError(
            f"{where} breaks rule 'format': it is not a metabench episode file (format {found!r}; expected "
            f"{EPISODE_FORMAT!r}).", "format"
        )
    return meta, arrays


def _json_array(where: str, name: str, entry) -> np.ndarray:
    """One ``{"dtype": ..., "data": nested lists}`` entry of a ``.json`` file, refusing lossy casts."""
    if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str) or "data" not in entry:
        raise EpisodeFileError(
            f"{where} breaks rule 'format': array {name!r} must be an object with 'dtype' (a string) and 'data'.", "format"
        )
    try:
        dtype = np.dtype(entry["dtype"])
    except TypeError as error:
        raise EpisodeFileError(f"{where} breaks rule 'dtype': array {name!r} has dtype {entry['dtype']!r} ({error}).",
                               "dtype") from error
    if dtype.kind not in "iuf":
        raise EpisodeFileError(
            f"{where} breaks rule 'dtype': array {name!r} has dtype {entry['dtype']!r}; expected an integer "
            f"(episode indices) or floating (regression values) dtype.", "dtype",
        )
    try:
        raw = np.array(entry["data"])
    except ValueError as error:  # ragged nesting
        raise EpisodeFileError(f"{where} breaks rule 'shape': array {name!r} is not rectangular ({error}).", "shape") from error
    allowed = "iu" if dtype.kind in "iu" else "iuf"
    if raw.size and raw.dtype.kind not in allowed:
        raise EpisodeFileError(
            f"{where} breaks rule 'dtype': array {name!r} says {entry['dtype']} but holds "
            f"{'non-integer' if dtype.kind in 'iu' else 'non-numeric'} values.", "dtype",
        )
    try:
        with np.errstate(over="raise", invalid="raise"):
            array = raw.astype(dtype)
    except (OverflowError, FloatingPointError, ValueError) as error:
        raise EpisodeFileError(f"{where} breaks rule 'dtype': array {name!r} holds values outside {dtype} ({error}).",
                               "dtype") from error
    if dtype.kind in "iu" and not np.array_equal(array, raw):
        raise EpisodeFileError(f"{where} breaks rule 'dtype': array {name!r} holds values outside {dtype}.", "dtype")
    return array


def _check_meta(where: str, meta: dict) -> None:
    """Rule ``"meta"``: every field of the file's header has the type and value the format allows."""

    def broken(field, expected):
        raise EpisodeFileError(
            f"{where} breaks rule 'meta': field {field!r} is {meta.get(field)!r}; expected {expected}.", "meta"
        )

    def integer(value):
        return isinstance(value, int) and not isinstance(value, bool)

    kind = meta.get("kind")
    if kind not in ("classification", "regression"):
        broken("kind", "'classification' or 'regression'")
    for field in ("dataset", "split"):
        if not isinstance(meta.get(field), str) or not meta[field]:
            broken(field, "a non-empty string")
    if kind == "classification":
        if not integer(meta.get("ways")) or meta["ways"] < 2:
            broken("ways", "an integer >= 2 for a classification file")
    elif meta.get("ways") is not None:
        broken("ways", "null for a regression file")
    for field in ("shots", "queries"):
        if not integer(meta.get(field)) or meta[field] < 1:
            broken(field, "a positive integer")
    if not integer(meta.get("seed")) or meta["seed"] < 0:
        broken("seed", "a non-negative integer")
    if meta.get("rotations") not in (ROTATION_MODES if kind == "classification" else ("none",)):
        broken("rotations", f"one of {list(ROTATION_MODES)}" if kind == "classification" else "'none' for a regression file")
    digest = meta.get("pool_digest")
    if kind == "classification" and not (isinstance(digest, str) and _HEX64.fullmatch(digest)):
        broken("pool_digest", "64 lowercase hex digits (sha256 of the split's class names)")
    if kind == "regression" and digest != "":
        broken("pool_digest", "'' for a regression file")
    inputs = meta.get("inputs", {})
    if not isinstance(inputs, dict):
        broken("inputs", "an object")
    if inputs:
        table = inputs.get("dataset")
        if not isinstance(table, dict) or table.get("name") != meta["dataset"]:
            broken("inputs", f"{{'dataset': {{'name': {meta['dataset']!r}, ...options}}, 'preprocess_version': N}}")
        if not integer(inputs.get("preprocess_version")) or set(inputs) != {"dataset", "preprocess_version"}:
            broken("inputs", "exactly the keys 'dataset' and 'preprocess_version' (an integer)")
    for field in ("num_classes", "images_per_class", "episodes"):
        value = meta.get(field)
        if value is not None and (not integer(value) or value < 1 or (kind == "regression" and field != "episodes")):
            broken(field, "absent or a positive integer" + (" (classification only)" if field != "episodes" else ""))
    if not (isinstance(meta.get("fingerprint"), str) and _HEX64.fullmatch(meta["fingerprint"])):
        broken("fingerprint", "64 lowercase hex digits")


def _first_broken(where: str, rule: str, bad: np.ndarray, detail) -> None:
    """Raise for the first episode flagged in ``bad [E]``; ``detail(e)`` says what is wrong with it."""
    flagged = np.flatnonzero(bad)
    if flagged.size == 0:
        return
    e = int(flagged[0])
    more = f" ({flagged.size} episodes break it in all)" if flagged.size > 1 else ""
    raise EpisodeFileError(f"{where}: episode {e} breaks rule {rule!r}: {detail(e)}{more}.", rule, e)


def _repeated(values: np.ndarray) -> np.ndarray:
    """``values [..., M]`` -> ``[...]``: whether some value occurs twice along the last axis."""
    ordered = np.sort(values, axis=-1)
    return (ordered[..., 1:] == ordered[..., :-1]).any(axis=-1)


def _first_repeat(row) -> int:
    seen = set()
    for value in (int(v) for v in row):
        if value in seen:
            return value
        seen.add(value)
    raise AssertionError("no repeat")


def _check_dtypes_and_shapes(where: str, arrays: dict, expected: dict, kinds: str, kind_name: str) -> None:
    for name, shape in expected.items():
        array = arrays[name]
        if array.dtype.kind not in kinds or array.dtype.byteorder == ">":
            raise EpisodeFileError(
                f"{where} breaks rule 'dtype': array {name!r} has dtype {array.dtype.str}; expected a little-endian "
                f"{kind_name} dtype (metabench writes {'int64' if kinds == 'iu' else 'float32'}).", "dtype",
            )
        if array.ndim != len(shape) or any(want is not None and got != want for got, want in zip(array.shape, shape)):
            described = "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"
            raise EpisodeFileError(
                f"{where} breaks rule 'shape': array {name!r} has shape {tuple(array.shape)}; expected {described}.",
                "shape",
            )


def _check_classification(where, spec: EpisodeSpec, rotations: str, arrays: dict, num_classes, images_per_class) -> None:
    """Rules of a classification set, in the order ``docs/episode-format.md`` lists them."""
    count = int(arrays["classes"].shape[0]) if arrays["classes"].ndim else 0
    n, k, q = spec.ways, spec.shots, spec.queries
    expected = {"classes": (count, n), "rotations": (count, n), "support": (count, n, k), "query": (count, n, q)}
    _check_dtypes_and_shapes(where, arrays, expected, "iu", "integer")
    if count < 1:
        raise EpisodeFileError(f"{where} breaks rule 'shape': it holds no episodes.", "shape")
    classes, turns = arrays["classes"].astype(np.int64), arrays["rotations"].astype(np.int64)
    support, query = arrays["support"].astype(np.int64), arrays["query"].astype(np.int64)

    top = num_classes
    bad = (classes < 0).any(-1) | ((classes >= top).any(-1) if top is not None else False)
    allowed = f"0..{top - 1}" if top is not None else ">= 0"
    _first_broken(where, "class-range", bad, lambda e: f"classes {classes[e].tolist()} must be in {allowed} "
                  f"(the split has {top if top is not None else 'an unrecorded number of'} classes)")
    bad = ((turns < 0) | (turns > 3)).any(-1)
    _first_broken(where, "rotation-range", bad, lambda e: f"rotations {turns[e].tolist()} must be quarter turns 0..3")
    if rotations == "none":
        _first_broken(where, "rotation-none", turns.any(-1),
                      lambda e: f"rotations {turns[e].tolist()} must all be 0 in rotation mode 'none'")
    both = np.concatenate([support, query], axis=-1)
    limit = images_per_class
    bad = (both < 0).any((-2, -1)) | ((both >= limit).any((-2, -1)) if limit is not None else False)

    def image_detail(e):
        c = int(np.flatnonzero(((both[e] < 0) | (both[e] >= (limit if limit is not None else np.inf))).any(-1))[0])
        span = f"0..{limit - 1} ({limit} images per class)" if limit is not None else ">= 0"
        return (f"class position {c} (class {classes[e, c]}) has support images {support[e, c].tolist()} and query "
                f"images {query[e, c].tolist()}; image indices must be in {span}")

    _first_broken(where, "image-range", bad, image_detail)
    if rotations == "classes":
        keys = classes * 4 + turns
        _first_broken(where, "distinct-classes", _repeated(keys), lambda e: (
            f"(class, rotation) pair {divmod(_first_repeat(keys[e]), 4)} appears twice among "
            f"{list(zip(classes[e].tolist(), turns[e].tolist()))}; in rotation mode 'classes' each pair is a class"))
    else:
        _first_broken(where, "distinct-classes", _repeated(classes),
                      lambda e: f"class {_first_repeat(classes[e])} appears twice in classes {classes[e].tolist()}")
    for rule, images, name in (("distinct-support", support, "support"), ("distinct-query", query, "query")):
        repeats = _repeated(images)

        def detail(e, repeats=repeats, images=images, name=name):
            c = int(np.flatnonzero(repeats[e])[0])
            return (f"class position {c} (class {classes[e, c]}) uses image {_first_repeat(images[e, c])} twice in "
                    f"its {name} images {images[e, c].tolist()}")

        _first_broken(where, rule, repeats.any(-1), detail)
    overlap = _repeated(both)

    def overlap_detail(e):
        c = int(np.flatnonzero(overlap[e])[0])
        return (f"class position {c} (class {classes[e, c]}) uses image {_first_repeat(both[e, c])} in both its support "
                f"{support[e, c].tolist()} and its query {query[e, c].tolist()}")

    _first_broken(where, "support-query-disjoint", overlap.any(-1), overlap_detail)


def _check_regression(where, spec: EpisodeSpec, arrays: dict) -> None:
    """Rules of a regression set: floating dtypes, consistent shapes, finite values."""
    params = arrays["params"]
    count = int(params.shape[0]) if params.ndim else 0
    d_in = arrays["support_x"].shape[-1] if arrays["support_x"].ndim == 3 else None
    d_out = arrays["support_y"].shape[-1] if arrays["support_y"].ndim == 3 else None
    expected = {
        "params": (count, None),
        "support_x": (count, spec.shots, d_in),
        "support_y": (count, spec.shots, d_out),
        "query_x": (count, spec.queries, d_in),
        "query_y": (count, spec.queries, d_out),
    }
    _check_dtypes_and_shapes(where, arrays, expected, "f", "floating")
    if count < 1:
        raise EpisodeFileError(f"{where} breaks rule 'shape': it holds no tasks.", "shape")
    bad = np.zeros(count, dtype=bool)
    for name in REGRESSION_ARRAYS:
        bad |= ~np.isfinite(arrays[name]).reshape(count, -1).all(-1)
    def detail(e):
        names = [name for name in REGRESSION_ARRAYS if not np.isfinite(arrays[name][e]).all()]
        return f"{', '.join(names)} hold{'s' if len(names) == 1 else ''} NaN or infinite values"

    _first_broken(where, "finite", bad, detail)


def arrival_warmup(spec: EpisodeSpec) -> int:
    """Arrivals before the first scored one: N for classification (each class's first example: labels
    are arbitrary per episode, so no learner can name a class it has not seen), 1 for regression (the
    first point: there is nothing to adapt on before it)."""
    return spec.ways if spec.ways is not None else 1


def arrival_order(spec: EpisodeSpec, num_episodes: int, seed: int) -> np.ndarray:
    """The seeded order in which each episode's support examples arrive: ``[E, S]`` int64, each row a
    permutation of the support rows ``0..S-1`` (classification: row ``n * K + k``).

    Drawn from ``numpy.random.default_rng([seed, ARRIVAL_STREAM])``, a stream of its own, so the
    episodes themselves are the ones the seed always gave: ``u = rng.random((E, S))``. Regression:
    the points in ascending order of ``u``. Classification: first the support row of each class with
    the smallest ``u`` of its class (one per class, N arrivals), in ascending order of ``u``; then the
    other rows in ascending order of ``u``. So every class is in the support from arrival N on, and
    algorithms that need an example of every class (prototypes) can adapt on every scored prefix.
    """
    u = np.random.default_rng([int(seed), ARRIVAL_STREAM]).random((int(num_episodes), spec.shots * (spec.ways or 1)))
    if spec.ways is None:
        return np.argsort(u, axis=-1, kind="stable").astype(np.int64)
    per_class = u.reshape(num_episodes, spec.ways, spec.shots)
    first = (per_class == per_class.min(axis=-1, keepdims=True)).reshape(num_episodes, -1)
    return np.argsort(u + (~first), axis=-1, kind="stable").astype(np.int64)


def _check_arrivals(where: str, spec: EpisodeSpec, arrivals: np.ndarray, count: int) -> None:
    """Rule ``"arrivals"``: ``[E, S]`` integers, each row a permutation of ``0..S-1``; classification: the
    first N arrivals are one support row of each class."""
    size = spec.shots * (spec.ways or 1)
    arrivals = np.asarray(arrivals)
    if arrivals.dtype.kind not in "iu" or arrivals.dtype.byteorder == ">" or arrivals.shape != (count, size):
        raise EpisodeFileError(
            f"{where} breaks rule 'arrivals': array 'arrivals' has dtype {arrivals.dtype.str} and shape "
            f"{tuple(arrivals.shape)}; expected little-endian integers of shape ({count}, {size}) (E episodes, "
            f"S = {size} support examples each).", "arrivals",
        )
    ordered = np.sort(arrivals.astype(np.int64), axis=-1)
    bad = (ordered != np.arange(size)).any(axis=-1)
    _first_broken(where, "arrivals", bad, lambda e: f"arrivals {arrivals[e].tolist()} must be a permutation of the "
                  f"support rows 0..{size - 1}")
    if spec.ways is not None:
        classes = np.sort(arrivals[:, : spec.ways].astype(np.int64) // spec.shots, axis=-1)
        bad = (classes != np.arange(spec.ways)).any(axis=-1)
        _first_broken(where, "arrivals", bad, lambda e: f"the first {spec.ways} arrivals {arrivals[e, :spec.ways].tolist()} "
                      f"must be one support row of each class (row n * {spec.shots} + k is of class position n)")


def input_description(dataset_table: dict, preprocess_version: int) -> dict:
    """What turns a classification set's indices into model inputs: ``{"dataset": {name, options...},
    "preprocess_version": N}`` (``dataset_table`` is the config's ``[dataset]`` table). An option
    added later is left out at its neutral value (``config.HASH_NEUTRAL``), so adding it changed
    no existing set's fingerprint; at any other value it is part of the set's identity."""
    return {"dataset": dict(sorted(without_neutral("dataset", dataset_table).items())), "preprocess_version": int(preprocess_version)}


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
    return EvaluationSet(dataset, pool.name, spec, seed, episodes, rotations, pool_digest(pool), dict(inputs or {}),
                         pool.num_classes, pool.images_per_class)


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
