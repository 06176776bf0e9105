"""Episode invariants, fixed evaluation sets and their fingerprints."""

import numpy as np
import pytest

from metabench.datasets.base import ClassPool
from metabench.datasets.sinusoid import Sinusoid
from metabench.harness.data import episodes as ep


def _pool(classes=12, per_class=10, size=4):
    # Each image encodes (class, index) so tests can see exactly what was picked.
    images = np.zeros((classes, per_class, size, size, 1), dtype=np.float32)
    for c in range(classes):
        for i in range(per_class):
            images[c, i, 0, 0, 0] = c
            images[c, i, 0, 1, 0] = i
    return ClassPool("test", images, tuple(f"class{c}" for c in range(classes)))


def _check_invariants(episodes, spec, num_classes):
    assert episodes.classes.shape == (len(episodes), spec.ways)
    for e in range(len(episodes)):
        assert len(set(episodes.classes[e])) == spec.ways  # distinct classes
        assert episodes.classes[e].max() < num_classes
        for c in range(spec.ways):
            assert not set(episodes.support[e, c]) & set(episodes.query[e, c])  # disjoint images
            assert len(set(episodes.support[e, c])) == spec.shots
            assert len(set(episodes.query[e, c])) == spec.queries


@pytest.mark.parametrize("rotations", ["none", "per_task"])
def test_sampled_episodes_meet_invariants(rotations):
    pool, spec = _pool(), ep.EpisodeSpec(5, 2, 3)
    episodes = ep.sample_classification_episodes(pool, spec, 50, np.random.default_rng(0), rotations)
    _check_invariants(episodes, spec, pool.num_classes)
    if rotations == "none":
        assert not episodes.rotations.any()
    else:
        assert set(np.unique(episodes.rotations)) == {0, 1, 2, 3}


def test_materialized_labels_and_images_follow_the_indices():
    pool, spec = _pool(), ep.EpisodeSpec(4, 2, 3)
    episodes = ep.sample_classification_episodes(pool, spec, 3, np.random.default_rng(1))
    batch = ep.materialize_classification(pool, episodes)
    assert batch["support_x"].shape == (3, 8, 4, 4, 1) and batch["query_x"].shape == (3, 12, 4, 4, 1)
    assert batch["support_y"].dtype == np.int32
    for e in range(3):
        assert sorted(set(batch["support_y"][e])) == [0, 1, 2, 3]
        for row, label in enumerate(batch["query_y"][e]):
            # Label n means the n-th class of the episode, and its pixels say which class and image.
            assert batch["query_x"][e, row, 0, 0, 0] == episodes.classes[e, label]
        support_images = {(x[0, 0, 0], x[0, 1, 0]) for x in batch["support_x"][e]}
        query_images = {(x[0, 0, 0], x[0, 1, 0]) for x in batch["query_x"][e]}
        assert not support_images & query_images


def test_rotation_turns_the_class_images():
    pool = _pool(classes=3, per_class=4)
    episodes = ep.ClassificationEpisodes(
        classes=np.array([[0, 1]]), rotations=np.array([[0, 1]]), support=np.array([[[0], [0]]]), query=np.array([[[1], [1]]])
    )
    batch = ep.materialize_classification(pool, episodes)
    np.testing.assert_array_equal(batch["support_x"][0, 1], np.rot90(pool.images[1, 0], k=1, axes=(0, 1)))
    np.testing.assert_array_equal(batch["support_x"][0, 0], pool.images[0, 0])


def test_evaluation_set_is_fixed_by_its_seed_and_fingerprinted():
    pool, spec = _pool(), ep.EpisodeSpec(5, 1, 3)
    first = ep.classification_evaluation_set("toy", pool, spec, 40, seed=7)
    again = ep.classification_evaluation_set("toy", pool, spec, 40, seed=7)
    other = ep.classification_evaluation_set("toy", pool, spec, 40, seed=8)
    assert first.fingerprint == again.fingerprint
    np.testing.assert_array_equal(first.episodes.classes, again.episodes.classes)
    assert first.fingerprint != other.fingerprint
    more_queries = ep.classification_evaluation_set("toy", pool, ep.EpisodeSpec(5, 1, 4), 40, seed=7)
    assert more_queries.fingerprint != first.fingerprint


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_export_and_import_round_trip(tmp_path, suffix):
    pool = _pool()
    original = ep.classification_evaluation_set("toy", pool, ep.EpisodeSpec(3, 1, 2), 10, seed=1, rotations="per_task")
    loaded = ep.EvaluationSet.load(original.save(tmp_path / f"episodes{suffix}"))
    assert loaded.fingerprint == original.fingerprint
    np.testing.assert_array_equal(loaded.episodes.support, original.episodes.support)
    # The pool's size travels with the file, so loading can check every index is in range.
    assert (loaded.num_classes, loaded.images_per_class) == (original.num_classes, original.images_per_class) == (12, 10)
    assert loaded.identity() == original.identity()
    regression = ep.regression_evaluation_set(Sinusoid(), ep.EpisodeSpec(None, 5, 10), 8, seed=2)
    assert ep.EvaluationSet.load(regression.save(tmp_path / f"tasks{suffix}")).fingerprint == regression.fingerprint


def test_an_edited_episode_file_is_refused(tmp_path):
    original = ep.classification_evaluation_set("toy", _pool(), ep.EpisodeSpec(3, 1, 2), 5, seed=1)
    path = original.save(tmp_path / "episodes.json")
    import json

    payload = json.loads(path.read_text())
    classes = payload["arrays"]["classes"]["data"][0]
    classes[0] = min(set(range(12)) - set(classes))  # still three distinct classes: only the fingerprint tells
    path.write_text(json.dumps(payload))
    with pytest.raises(ep.EpisodeFileError, match="rule 'fingerprint'.*edited or damaged") as raised:
        ep.EvaluationSet.load(path)
    assert raised.value.rule == "fingerprint"


def test_ways_above_the_classes_in_the_split():
    with pytest.raises(ep.EpisodeError, match=r"ways=20, but split 'test' of toy has 12 classes"):
        ep.check_classification_spec(_pool(), ep.EpisodeSpec(20, 1, 1), "none", "toy")


def test_shots_plus_queries_above_the_images_per_class():
    with pytest.raises(ep.EpisodeError, match=r"shots=5 and queries=6 \(11 images per class\).*has 10 images per class"):
        ep.check_classification_spec(_pool(), ep.EpisodeSpec(5, 5, 6), "none", "toy")


@pytest.mark.parametrize("field", ["ways", "shots", "queries"])
def test_non_positive_spec_values(field):
    values = {"ways": 5, "shots": 1, "queries": 1, field: 0}
    with pytest.raises(ep.EpisodeError, match=rf"{field}=0; expected a positive integer"):
        ep.EpisodeSpec(**values)


def test_training_batches_depend_only_on_seed_and_iteration():
    a = ep.training_rng(3, 10).random(4)
    b = ep.training_rng(3, 10).random(4)
    c = ep.training_rng(3, 11).random(4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_training_batches_carry_a_seed_per_task_from_seed_and_iteration_without_changing_their_examples():
    from metabench.harness.data.training_data import Episodes

    spec = ep.EpisodeSpec(3, 2, 1)
    source = Episodes(_pool(), spec, tasks=4, rotations="none", seed=3)
    batch, again, later = source.batch(10), source.batch(10), source.batch(11)
    assert batch["task_seed"].dtype == np.int32 and batch["task_seed"].shape == (4,)
    assert len(set(batch["task_seed"].tolist())) == 4  # each task its own seed
    np.testing.assert_array_equal(batch["task_seed"], again["task_seed"])
    assert not np.array_equal(batch["task_seed"], later["task_seed"])
    # The examples are the ones the iteration's generator draws, as before the seeds were added.
    episodes = ep.sample_classification_episodes(_pool(), spec, 4, ep.training_rng(3, 10), "none")
    expected = ep.materialize_classification(_pool(), episodes)
    for key in ("support_x", "support_y", "query_x", "query_y"):
        np.testing.assert_array_equal(batch[key], expected[key])
