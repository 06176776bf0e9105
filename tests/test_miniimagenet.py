"""miniImageNet loader: the real Ravi split CSVs (when present) and a small generated image set."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metabench.datasets import miniimagenet
from metabench.datasets.base import DatasetError
from metabench.datasets.miniimagenet import MiniImageNet, read_split_csv

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REAL_CSVS = REAL_DATA / "miniimagenet" / "splits" / "ravi"
needs_real_csvs = pytest.mark.skipif(
    not (REAL_CSVS / "train.csv").is_file(), reason=f"real Ravi split CSVs not found in {REAL_CSVS}"
)


# --- real split files -----------------------------------------------------------------------


@needs_real_csvs
def test_real_csvs_have_64_16_20_disjoint_classes_of_600():
    classes = {split: read_split_csv(REAL_CSVS / f"{split}.csv") for split in ("train", "val", "test")}
    assert {split: len(c) for split, c in classes.items()} == {"train": 64, "val": 16, "test": 20}
    for split, c in classes.items():
        assert {len(files) for files in c.values()} == {600}, split
        assert all(f.startswith(label) and f.endswith(".jpg") for label, files in c.items() for f in files)
    train, val, test = (set(c) for c in classes.values())
    assert train.isdisjoint(val) and train.isdisjoint(test) and val.isdisjoint(test)
    dataset = MiniImageNet(REAL_DATA)
    assert dataset.class_names("train")[:2] == ("n01532829", "n01558993")  # CSV order
    assert dataset.class_names("val") == tuple(classes["val"])


@needs_real_csvs
def test_real_split_without_images_names_the_first_missing_one(tmp_path):
    with pytest.raises(DatasetError, match=r"12000 of the 12000 images .*test\.csv' are missing, the first being .*images/n0193011200000001\.jpg"):
        MiniImageNet(REAL_DATA, cache_dir=tmp_path).split("test")
    assert not any(tmp_path.iterdir())


# --- generated fixture ----------------------------------------------------------------------

# Labels deliberately not sorted, to check first-appearance order.
FIXTURE = {
    "train": ["n03000003", "n01000001", "n02000002", "n04000004"],
    "val": ["n05000005", "n06000006", "n07000007"],
    "test": ["n09000009", "n08000008", "n10000010"],
}
PER_CLASS = 5


def _texture(label: str, j: int, size: tuple[int, int]) -> np.ndarray:
    """uint8 ``[height, width, 3]`` with texture of known geometry, different for every (class, j): red
    rises left to right and green top to bottom (from 0 at the first pixel to 200 at the last, plus an
    offset of the class and j), blue is a checkerboard of 2-pixel cells. Cropping, padding or flipping
    instead of stretching to S x S changes the pixels; a flat colour would not show it."""
    k = int(label[1:])
    width, height = size
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    red = x * 200 // max(width - 1, 1) + k % 50
    green = y * 200 // max(height - 1, 1) + j * 10
    blue = (x // 2 + y // 2) % 2 * 200 + (k * 7 + j * 3) % 50
    return np.stack([red, green, blue], axis=-1).astype(np.uint8)


def _resized(path: Path, size: int) -> np.ndarray:
    """What the loader must return for the image file at ``path``, computed here: the whole image
    stretched to ``size x size`` by Pillow's LANCZOS resize (the file decoded as it is, JPEG loss too)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB").resize((size, size), Image.LANCZOS), dtype=np.uint8)


def _image_path(data_dir: Path, label: str, j: int, ext: str = "png") -> Path:
    return data_dir / "miniimagenet" / "images" / f"{label}{j:08d}.{ext}"


def make_miniimagenet(data_dir: Path, size=(12, 12), per_class=PER_CLASS, ext="png") -> Path:
    """``data_dir/miniimagenet/`` in the Ravi layout: textured images (``_texture``), ``size`` = (width, height)."""
    root = data_dir / "miniimagenet"
    (root / "splits" / "ravi").mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    for split, labels in FIXTURE.items():
        rows = ["filename,label"]
        for label in labels:
            for j in range(1, per_class + 1):
                filename = f"{label}{j:08d}.{ext}"
                Image.fromarray(_texture(label, j, size), "RGB").save(root / "images" / filename)
                rows.append(f"{filename},{label}")
        (root / "splits" / "ravi" / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def fixture_dir(tmp_path):
    make_miniimagenet(tmp_path / "data")
    return tmp_path / "data"


def _dataset(data_dir, cache_dir, **kwargs):
    kwargs.setdefault("image_size", 8)
    return MiniImageNet(data_dir, cache_dir=cache_dir, show_progress=False, **kwargs)


def test_split_shapes_dtype_order_and_pixels(fixture_dir, tmp_path):
    dataset = _dataset(fixture_dir, tmp_path / "cache")
    assert dataset.split_names() == ("train", "val", "test")
    train = dataset.split("train")
    assert train.class_names == tuple(FIXTURE["train"])
    assert train.images.shape == (4, PER_CLASS, 8, 8, 3) and train.images.dtype == np.uint8
    # Class c, image j is its file stretched from 12 x 12 to 8 x 8 by LANCZOS, pixel for pixel.
    for c, label in enumerate(FIXTURE["train"]):
        for j in range(PER_CLASS):
            np.testing.assert_array_equal(train.images[c, j], _resized(_image_path(fixture_dir, label, j + 1), 8), err_msg=f"{label} {j}")
    gathered = train.gather(np.array([1]), np.array([[0, 4]]))
    assert gathered.dtype == np.float32 and gathered.shape == (1, 2, 8, 8, 3)
    np.testing.assert_allclose(gathered[0, 1], _resized(_image_path(fixture_dir, FIXTURE["train"][1], 5), 8) / 255.0, rtol=1e-6)
    assert dataset.split("test").class_names == tuple(FIXTURE["test"])


def test_images_already_at_size_and_non_square_images(tmp_path):
    make_miniimagenet(tmp_path / "data", size=(8, 8))
    square = _dataset(tmp_path / "data", tmp_path / "cache").split("val")
    np.testing.assert_array_equal(square.images[2, 0], _texture(FIXTURE["val"][2], 1, (8, 8)))  # kept as it is
    # Non-square images are stretched to S x S: all of the image, neither cropped nor padded.
    make_miniimagenet(tmp_path / "wide", size=(30, 10), ext="jpg")
    make_miniimagenet(tmp_path / "tall", size=(9, 21))
    for data_dir, ext in ((tmp_path / "wide", "jpg"), (tmp_path / "tall", "png")):
        pool = _dataset(data_dir, tmp_path / "cache").split("val")
        assert pool.images.shape == (3, PER_CLASS, 8, 8, 3)
        for c, label in enumerate(FIXTURE["val"]):
            for j in range(PER_CLASS):
                expected = _resized(_image_path(data_dir, label, j + 1, ext), 8)
                np.testing.assert_array_equal(pool.images[c, j], expected, err_msg=f"{data_dir.name} {label} {j}")
        # The gradients span the whole side: red from the left edge's level to the right edge's, green top to bottom.
        offset = int(FIXTURE["val"][1][1:]) % 50
        red, green = pool.images[1, 3, :, :, 0].astype(int), pool.images[1, 3, :, :, 1].astype(int)
        assert red[:, 0].mean() < offset + 30 and red[:, -1].mean() > offset + 170, data_dir.name
        assert green[0].mean() < 4 * 10 + 30 and green[-1].mean() > 4 * 10 + 170, data_dir.name


def test_construction_and_class_names_need_no_images(tmp_path, monkeypatch):
    root = make_miniimagenet(tmp_path / "data")
    for image in (root / "images").iterdir():
        image.unlink()
    monkeypatch.setattr(miniimagenet, "_decode_image", lambda *a: pytest.fail("decoded an image"))
    dataset = _dataset(tmp_path / "data", tmp_path / "cache")
    assert dataset.class_names("val") == tuple(FIXTURE["val"])
    assert not (tmp_path / "cache").exists()


def test_second_instantiation_loads_the_cache_without_decoding(fixture_dir, tmp_path, monkeypatch):
    first = _dataset(fixture_dir, tmp_path / "cache").split("val")
    assert len(list((tmp_path / "cache" / "miniimagenet").glob("val-8px-*.npy"))) == 1
    monkeypatch.setattr(miniimagenet, "_decode_image", lambda *a: pytest.fail("decoded although cached"))
    second = _dataset(fixture_dir, tmp_path / "cache").split("val")
    np.testing.assert_array_equal(second.images, first.images)
    assert second.class_names == first.class_names


def _count_decodes(monkeypatch):
    calls = []
    real = miniimagenet._decode_image

    def counted(data, size):
        calls.append(1)
        return real(data, size)

    monkeypatch.setattr(miniimagenet, "_decode_image", counted)
    return calls


def test_changed_key_rebuilds(fixture_dir, tmp_path, monkeypatch):
    _dataset(fixture_dir, tmp_path / "cache").split("test")
    calls = _count_decodes(monkeypatch)
    _dataset(fixture_dir, tmp_path / "cache").split("test")
    assert calls == []
    # An image replaced by one of another size changes the key.
    image = fixture_dir / "miniimagenet" / "images" / f"{FIXTURE['test'][0]}00000002.png"
    Image.new("RGB", (16, 16), (1, 2, 3)).save(image)
    rebuilt = _dataset(fixture_dir, tmp_path / "cache").split("test")
    assert len(calls) == 3 * PER_CLASS
    assert (rebuilt.images[0, 1] == (1, 2, 3)).all()
    monkeypatch.setattr(miniimagenet, "PREPROCESS_VERSION", miniimagenet.PREPROCESS_VERSION + 1)
    _dataset(fixture_dir, tmp_path / "cache").split("test")
    assert len(calls) == 2 * 3 * PER_CLASS
    # Another image size is another cache entry.
    _dataset(fixture_dir, tmp_path / "cache", image_size=6).split("test")
    assert len(calls) == 3 * 3 * PER_CLASS


def test_corrupt_cache_is_rebuilt_with_a_warning(fixture_dir, tmp_path, monkeypatch, caplog):
    expected = _dataset(fixture_dir, tmp_path / "cache").split("train").images
    (npy,) = (tmp_path / "cache" / "miniimagenet").glob("train-*.npy")
    npy.write_bytes(npy.read_bytes()[:100])
    calls = _count_decodes(monkeypatch)
    with caplog.at_level(logging.WARNING):
        again = _dataset(fixture_dir, tmp_path / "cache").split("train")
    assert len(calls) == 4 * PER_CLASS and "rebuilding" in caplog.text
    np.testing.assert_array_equal(again.images, expected)


# --- errors ---------------------------------------------------------------------------------


def _csv(data_dir: Path, split: str) -> Path:
    return data_dir / "miniimagenet" / "splits" / "ravi" / f"{split}.csv"


def test_missing_csv(fixture_dir, tmp_path):
    _csv(fixture_dir, "val").unlink()
    with pytest.raises(DatasetError, match=r"val\.csv' does not exist; copy train\.csv, val\.csv and test\.csv from .*meta-learning-lstm"):
        _dataset(fixture_dir, tmp_path / "cache").split("val")


@pytest.mark.parametrize(
    "text, match",
    [
        ("", r"line 1: header '', expected 'filename,label'"),
        ("file,class\nn0100000100000001.png,n01000001\n", r"line 1: header 'file,class', expected 'filename,label'"),
        ("filename,label\n", r"lists no images"),
        ("filename,label\nn0100000100000001.png\n", r"line 2: 'n0100000100000001\.png' is not '<filename>,<label>'"),
        ("filename,label\nn0100000100000001.png,n01000001,extra\n", r"line 2: .* is not '<filename>,<label>'"),
        ("filename,label\nn0100000100000001.png,n01000001\n../secret.png,n01000001\n", r"line 3: '\.\./secret\.png,n01000001' is not"),
        ("filename,label\n/etc/passwd,n01000001\n", r"line 2: '/etc/passwd,n01000001' is not"),
        ("filename,label\na.png,n01000001\nb.png,n01000001\na.png,n01000001\n", r"line 4: 'a\.png' is listed again \(first on line 2\)"),
        ("filename,label\na.png,n01\nb.png,n01\nc.png,n02\n", r"classes have different numbers of images \(1 images: n02; 2 images: n01\)"),
    ],
)
def test_malformed_csv(tmp_path, text, match):
    path = tmp_path / "split.csv"
    path.write_text(text)
    with pytest.raises(DatasetError, match=match) as raised:
        read_split_csv(path)
    assert "split.csv" in str(raised.value)


def test_missing_images_are_counted_and_the_first_named(fixture_dir, tmp_path):
    images = fixture_dir / "miniimagenet" / "images"
    (images / f"{FIXTURE['train'][1]}00000003.png").unlink()
    (images / f"{FIXTURE['train'][2]}00000001.png").unlink()
    with pytest.raises(DatasetError, match=rf"2 of the 20 images .*train\.csv' are missing, the first being .*{FIXTURE['train'][1]}00000003\.png"):
        _dataset(fixture_dir, tmp_path / "cache").split("train")


def test_undecodable_image(fixture_dir, tmp_path):
    bad = fixture_dir / "miniimagenet" / "images" / f"{FIXTURE['val'][1]}00000004.png"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(DatasetError, match=rf"Image .*{FIXTURE['val'][1]}00000004\.png' cannot be decoded"):
        _dataset(fixture_dir, tmp_path / "cache").split("val")
    assert not list((tmp_path / "cache").rglob("*.npy"))


def test_unknown_split_and_bad_arguments(fixture_dir, tmp_path, monkeypatch):
    with pytest.raises(DatasetError, match=r"Received split='background', but miniimagenet has splits \['train', 'val', 'test'\]"):
        _dataset(fixture_dir, tmp_path / "cache").split("background")
    with pytest.raises(DatasetError, match=r"Received: image_size=0, expected a positive integer"):
        MiniImageNet(fixture_dir, image_size=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"has no miniimagenet/ folder.*splits/ravi"):
        MiniImageNet(tmp_path / "empty")
    (tmp_path / "file").write_text("")
    with pytest.raises(DatasetError, match="is a file, not a directory"):
        MiniImageNet(tmp_path / "file")
    monkeypatch.delenv("METABENCH_DATA", raising=False)
    with pytest.raises(DatasetError, match=r"--data-dir DIR \(or set METABENCH_DATA=DIR\)"):
        MiniImageNet()
