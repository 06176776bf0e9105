"""The data side of a run: a resolved config -> the dataset, the training source and the fixed
evaluation episode sets, each episode spec checked against the data before anything is recorded."""

from __future__ import annotations

import dataclasses

from metabench.datasets.base import ClassificationDataset
from metabench.harness.config import ConfigError
from metabench.harness.data import episodes as ep
from metabench.harness.data.stream import stream_of
from metabench.harness.registry import DATASETS


@dataclasses.dataclass
class Prepared:
    """Data side of a run: the training pool (or task family) and the fixed evaluation sets.

    Attributes:
        train_source: ``ClassPool`` of the training split, or the ``RegressionTaskFamily``.
        train_spec: episode shape of meta-training.
        eval_sets: one ``EvaluationSet`` per evaluation setting.
        eval_pool: ``ClassPool`` the evaluation episodes index (``None`` for regression).
        input_shape: shape of one example, e.g. ``(28, 28, 1)`` or ``(1,)``.
        kind: ``"classification"`` or ``"regression"``.
        output_dim: regression output size (unused for classification).
        validation_set: ``(EvaluationSet, ClassPool)`` the top-k ensemble ranks checkpoints on, or ``None``.
        prequential_sets: with ``evaluation.prequential``, each of ``eval_sets`` with its seeded arrival
            order (``EvaluationSet.with_arrivals``); else empty.
        stream: with ``evaluation.stream``, the drifting task stream
            (:func:`metabench.harness.data.stream.drifting_stream`); else ``None``.
    """

    train_source: object
    train_spec: ep.EpisodeSpec
    eval_sets: list
    eval_pool: object
    input_shape: tuple
    kind: str
    output_dim: int = 1
    validation_set: object = None
    prequential_sets: list = dataclasses.field(default_factory=list)
    stream: object = None


def prepare(config: dict, data_dir=None, cache_dir=None) -> Prepared:
    """Build the dataset and every episode set, checking the specs against the data."""
    prepared = _prepare(config, data_dir, cache_dir)
    if config["evaluation"]["prequential"]:
        for eval_set in prepared.eval_sets:
            check_prequential_spec(eval_set)
        prepared = dataclasses.replace(prepared, prequential_sets=[s.with_arrivals() for s in prepared.eval_sets])
    if config["evaluation"]["stream"]:
        prepared = dataclasses.replace(prepared, stream=stream_of(config, prepared.train_source))
    return prepared


def check_prequential_spec(eval_set) -> None:
    """Raise ``ConfigError`` when ``eval_set`` has no arrival to score (one example per class, or one point)."""
    if eval_set.support_size <= eval_set.warmup:
        what = "one example per class" if eval_set.spec.ways else "one support point"
        first = "of each class" if eval_set.spec.ways else "point"
        raise ConfigError(
            f"Received evaluation.prequential = true with {eval_set.spec.describe()} episodes: their support set is "
            f"{what}, and prequential evaluation scores only the arrivals after the first {first}, so it would score "
            "nothing. Use at least 2 shots (evaluation.shots), or turn evaluation.prequential off."
        )


def _prepare(config: dict, data_dir=None, cache_dir=None) -> Prepared:
    dataset_options = {k: v for k, v in config["dataset"].items() if k != "name"}
    dataset = DATASETS.get(config["dataset"]["name"]).factory(data_dir=data_dir, cache_dir=cache_dir, **dataset_options)
    train, evaluation = config["train"], config["evaluation"]
    name = config["dataset"]["name"]
    eval_shots = [s or train["shots"] for s in evaluation["shots"]]
    eval_queries = evaluation["queries"] or train["queries"]
    if isinstance(dataset, ClassificationDataset):
        if train["ways"] == 0:
            raise ConfigError(f"{name} is a classification dataset: set train.ways (e.g. 5).")
        ways = evaluation["ways"] or train["ways"]
        train_spec = ep.EpisodeSpec(train["ways"], train["shots"], train["queries"])
        eval_rotations = evaluation["rotations"] or train["rotations"]
        inputs = ep.input_description(config["dataset"], dataset.preprocess_version)
        train_pool = dataset.split(train["split"])
        ep.check_classification_spec(train_pool, train_spec, train["rotations"], name)
        eval_pool = train_pool if evaluation["split"] == train["split"] else dataset.split(evaluation["split"])
        eval_sets = [
            ep.classification_evaluation_set(
                name, eval_pool, ep.EpisodeSpec(ways, shots, eval_queries), evaluation["episodes"], evaluation["seed"], eval_rotations,
                inputs,
            )
            for shots in eval_shots
        ]
        validation_set = None
        if evaluation["ensemble_top_k"]:
            validation_pool = dataset.split(evaluation["validation_split"])
            validation_set = ep.classification_evaluation_set(
                name, validation_pool, ep.EpisodeSpec(ways, eval_shots[0], eval_queries), evaluation["validation_episodes"],
                evaluation["seed"], eval_rotations, inputs,
            )
            validation_set = (validation_set, validation_pool)
        return Prepared(train_pool, train_spec, eval_sets, eval_pool, train_pool.image_shape, "classification",
                        validation_set=validation_set)
    if train["ways"] or evaluation["ways"]:
        raise ConfigError(f"{name} is a regression task family: leave train.ways and evaluation.ways unset (0).")
    if evaluation["ensemble_top_k"]:
        raise ConfigError("evaluation.ensemble_top_k ensembles classifiers' logits; it is for classification datasets only.")
    train_spec = ep.EpisodeSpec(None, train["shots"], train["queries"])
    eval_sets = [
        ep.regression_evaluation_set(dataset, ep.EpisodeSpec(None, shots, eval_queries), evaluation["episodes"], evaluation["seed"], evaluation["split"])
        for shots in eval_shots
    ]
    return Prepared(dataset, train_spec, eval_sets, None, (dataset.input_dim,), "regression", dataset.output_dim)
