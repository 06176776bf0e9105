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
