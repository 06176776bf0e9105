"""Where meta-training batches come from; each batch is a function of (seed, iteration) only.

Algorithms say which kind they train on (``Algorithm.training_data``):

- ``"episodes"``: fresh N-way K-shot episodes (or regression tasks) every iteration, the
  meta-learning default. Batch: ``support_x [T, ...]``, ``support_y``, ``query_x``, ``query_y``.
- ``"pooled"``: ordinary supervised batches over every training class at once, for pre-training
  baselines. Batch (a single "task", ``T = 1``): ``x [1, B, ...]`` and ``y [1, B]`` with global
  class labels (a class and a rotation form one class when rotations are on). Regression families
  have no classes, so pooled regression batches are the episodes themselves.
- ``"fixed_tasks"``: a fixed list of ``M`` training tasks drawn once from the seed (classes and
  their label order, or sinusoid amplitude and phase), with fresh examples each time, for
  multi-task learning with one head per task. Episode batch plus ``task_index [T]``.

Every batch also carries ``iteration [T]`` (int32) for algorithms with schedules (MAML++), and
``task_seed [T]`` (int32 in ``[0, 2**31)``): a seed for each task's own random choices inside the
compiled step (Reptile's inner minibatch order), drawn from (seed, iteration) on a stream of its own,
so adding it changed no batch's examples.
"""

from __future__ import annotations

import numpy as np

from metabench.datasets.base import ClassPool
from metabench.harness.data import episodes as ep

TRAINING_DATA = ("episodes", "pooled", "fixed_tasks")


def make_source(kind: str, train_source, spec: ep.EpisodeSpec, train: dict, seed: int, num_fixed_tasks: int = 0):
    """The batch source for ``kind`` (one of ``TRAINING_DATA``)."""
    if kind not in TRAINING_DATA:
        raise ValueError(f"Received training_data={kind!r}; expected one of {list(TRAINING_DATA)}.")
    if kind == "pooled" and isinstance(train_source, ClassPool):
        return PooledClasses(train_source, train["meta_batch_size"], train["rotations"], seed)
    if kind == "fixed_tasks":
        return FixedTasks(train_source, spec, train["meta_batch_size"], train["rotations"], seed, num_fixed_tasks)
    return Episodes(train_source, spec, train["meta_batch_size"], train["rotations"], seed)


def _with_task_keys(batch: dict, seed: int, iteration: int) -> dict:
    """``batch`` plus ``iteration [T]`` and ``task_seed [T]`` (see the module docstring)."""
    tasks = next(iter(batch.values())).shape[0]
    batch["iteration"] = np.full((tasks,), iteration, dtype=np.int32)
    batch["task_seed"] = np.random.default_rng([seed, iteration, 1]).integers(0, 2**31 - 1, size=tasks, dtype=np.int32)
    return batch


class Episodes:
    """Fresh episodes (or regression tasks) every iteration."""

    #: global classes of the batches' labels (what a pooled classifier's head needs); episodes have none
    num_classes: int | None = None

    def __init__(self, source, spec: ep.EpisodeSpec, tasks: int, rotations: str, seed: int):
        self.source, self.spec, self.tasks, self.rotations, self.seed = source, spec, tasks, rotations, seed

    def batch(self, iteration: int) -> dict:
        rng = ep.training_rng(self.seed, iteration)
        if isinstance(self.source, ClassPool):
            episodes = ep.sample_classification_episodes(self.source, self.spec, self.tasks, rng, self.rotations)
            return _with_task_keys(ep.materialize_classification(self.source, episodes), self.seed, iteration)
        tasks = self.source.sample(rng, self.tasks, self.spec.shots, self.spec.queries)
        return _with_task_keys(ep.regression_batch(tasks), self.seed, iteration)


class PooledClasses:
    """Batches of ``batch_size`` images from every class of a pool, labelled with global class ids.

    With rotations on, each (class, quarter turn) pair is a class of its own:
    ``label = 4 * class + turn``, so there are ``4 * num_classes`` labels.
    """

    def __init__(self, pool: ClassPool, batch_size: int, rotations: str, seed: int):
        self.pool, self.batch_size, self.rotations, self.seed = pool, batch_size, rotations, seed

    @property
    def num_classes(self) -> int:
        return self.pool.num_classes * (1 if self.rotations == "none" else 4)

    def batch(self, iteration: int) -> dict:
        rng = ep.training_rng(self.seed, iteration)
        classes = rng.integers(0, self.pool.num_classes, size=self.batch_size)
        images = rng.integers(0, self.pool.images_per_class, size=(self.batch_size, 1))
        x = self.pool.gather(classes, images)[:, 0]
        labels = classes
        if self.rotations != "none":
            turns = rng.integers(0, 4, size=self.batch_size)
            for quarter in (1, 2, 3):
                mask = turns == quarter
                x[mask] = np.rot90(x[mask], k=quarter, axes=(1, 2))
            labels = 4 * classes + turns
        return _with_task_keys({"x": x[None], "y": labels[None].astype(np.int32)}, self.seed, iteration)


class FixedTasks:
    """A fixed list of ``num_tasks`` training tasks; each iteration draws ``tasks`` of them with fresh examples."""

    num_classes: int | None = None  # as for Episodes: labels are per task

    def __init__(self, source, spec: ep.EpisodeSpec, tasks: int, rotations: str, seed: int, num_tasks: int):
        if num_tasks < 1:
            raise ValueError(f"Received num_tasks={num_tasks}; a fixed task list needs at least one task.")
        self.source, self.spec, self.tasks, self.rotations, self.seed = source, spec, tasks, rotations, seed
        self.num_tasks = num_tasks
        rng = np.random.default_rng([seed, 2**31 - 1])  # not a training iteration's stream
        if isinstance(source, ClassPool):
            ep.check_classification_spec(source, spec, rotations, "training pool")
            self.fixed = ep.sample_classification_episodes(source, spec, num_tasks, rng, rotations)
        else:
            self.fixed = source.sample(rng, num_tasks, 1, 1).params

    def batch(self, iteration: int) -> dict:
        rng = ep.training_rng(self.seed, iteration)
        index = rng.integers(0, self.num_tasks, size=self.tasks)
        if isinstance(self.source, ClassPool):
            support, query = ep.sample_image_indices(
                rng, self.tasks, self.spec.ways, self.source.images_per_class, self.spec.shots, self.spec.queries
            )
            episodes = ep.ClassificationEpisodes(
                classes=self.fixed.classes[index], rotations=self.fixed.rotations[index], support=support, query=query
            )
            batch = ep.materialize_classification(self.source, episodes)
        else:
            params = self.fixed[index]
            x = self.source.sample_inputs(rng, self.tasks, self.spec.shots + self.spec.queries)
            y = self.source.targets(params, x)
            k = self.spec.shots
            batch = {"support_x": x[:, :k], "support_y": y[:, :k], "query_x": x[:, k:], "query_y": y[:, k:]}
        batch["task_index"] = index.astype(np.int32)
        return _with_task_keys(batch, self.seed, iteration)
