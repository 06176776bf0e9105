import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The real datasets (``../shared/data``); tests that need them skip when it is absent."""
    if not (SHARED_DATA / "omniglot" / "images_background.zip").is_file():
        pytest.skip(f"Omniglot archives not found under {SHARED_DATA} (the data dir the tests read)")
    return SHARED_DATA


@pytest.fixture
def store(tmp_path):
    """An empty results store, ``tmp_path / "results.sqlite"``, open for the test; a test file that
    needs runs in it overrides this with a ``store(store)`` fixture that adds them (``helpers.record_run``)."""
    from metabench.harness.results.store import ResultsStore  # only the tests that use a store load it

    with ResultsStore(tmp_path / "results.sqlite") as opened:
        yield opened
