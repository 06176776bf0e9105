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


@pytest.fixture
def float64():
    """Keras computes in float64 for the test (finite-difference checks), then the previous dtype returns."""
    import keras  # loaded only by the tests that ask for float64

    previous, previous_policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx(previous)
    keras.config.set_dtype_policy(previous_policy)
