"""Episode invariants on the real Omniglot test split (skipped only when the data dir is absent)."""

import numpy as np
import pytest

from metabench.datasets.omniglot import Omniglot
from metabench.harness import episodes as ep


@pytest.fixture(scope="module")
def test_pool(shared_data_dir):
    return Omniglot(shared_data_dir, split_scheme="maml", show_progress=False).split("test")


def test_evaluation_episodes_on_real_omniglot(test_pool):
    spec = ep.EpisodeSpec(5, 1, 15)
    first = ep.classification_evaluation_set("omniglot", test_pool, spec, 600, seed=1, rotations="per_task")
    again = ep.classification_evaluation_set("omniglot", test_pool, spec, 600, seed=1, rotations="per_task")
    other = ep.classification_evaluation_set("omniglot", test_pool, spec, 600, seed=2, rotations="per_task")
    assert test_pool.num_classes == 423 and len(first) == 600
    assert first.fingerprint == again.fingerprint != other.fingerprint
    np.testing.assert_array_equal(first.episodes.support, again.episodes.support)
    assert not np.array_equal(first.episodes.classes, other.episodes.classes)
    for e in range(len(first)):
        assert len(set(first.episodes.classes[e])) == 5
        for c in range(5):
            assert not set(first.episodes.support[e, c]) & set(first.episodes.query[e, c])
    batch = next(first.batches(8, test_pool))
    assert batch["support_x"].shape == (8, 5, 28, 28, 1) and batch["query_x"].shape == (8, 75, 28, 28, 1)
    for e in range(8):
        assert sorted(set(batch["support_y"][e].tolist())) == [0, 1, 2, 3, 4]
        assert np.bincount(batch["query_y"][e]).tolist() == [15] * 5
        # No query image equals a support image of the same episode.
        for s in batch["support_x"][e]:
            assert not np.any(np.all(batch["query_x"][e] == s, axis=(1, 2, 3)))
