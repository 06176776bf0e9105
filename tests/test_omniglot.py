"""Omniglot loader: the real archives (when present) and small synthetic archives built here."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metabench.datasets import omniglot
from metabench.datasets.base import DatasetError, default_cache_dir
from metabench.datasets.omniglot import Omniglot

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_real_data = pytest.mark.skipif(
    not (REAL_DATA / "omniglot" / "images_background.zip").is_file(),
    reason=f"real Omniglot archives not found in {REAL_DATA / 'omniglot'}",
)

# sha256 of "\n".join(class names) of each MAML split on the official archives: pins the
# permutation (np.random.default_rng(1)) so a NumPy or code change cannot silently move it.
MAML_DIGESTS = {
    "train": "cecd84b071ff1f99c8f480cdd177d1fc77dfe0dbeb0b86e6aff6a32c8a567c76",
    "val": "a0853ae4b8e536b3a183944f7ae7b3d09e752261bbe797d9cf22956e85750cff",
    "test": "b56e1f4aee52166766ad47cf69dc743a6aa9c4ba00c647bd0e78fc1475613c26",
}


# --- real data ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_cache() -> Path:
    """Shared across test runs, so only the first run decodes the 32,460 PNGs (~5 s)."""
    env = os.environ.get("METABENCH_TEST_CACHE")
    return Path(env) if env else default_cache_dir()


def _real(real_cache, scheme):
    return Omniglot(REAL_DATA, split_scheme=scheme, cache_dir=real_cache, show_progress=False)


@pytest.fixture(scope="module")
def official(real_cache):
    dataset = _real(real_cache, "official")
    dataset.split("background")  # decode (first run) or load the cache once for the module
    return dataset


@pytest.fixture(scope="module")
def maml(real_cache, official):
    return _real(real_cache, "maml")


@pytest.fixture(scope="module")
def vinyals(real_cache, official):
    return _real(real_cache, "vinyals")


@needs_real_data
def test_real_archives_have_964_and_659_characters_of_20_images(official):
    background, evaluation = official.split("background"), official.split("evaluation")
    assert official.split_names() == ("background", "evaluation")
    assert background.images.shape == (964, 20, 28, 28, 1)
    assert evaluation.images.shape == (659, 20, 28, 28, 1)
    assert len(official.characters()) == 1623
    assert official.characters() == tuple(sorted(official.characters()))
    assert official.characters("background") == background.class_names
    assert background.class_names == tuple(sorted(background.class_names))
    assert official.archive_of("Greek/character01") == "background"
    assert official.archive_of("Tibetan/character01") == "evaluation"
    assert set(background.class_names).isdisjoint(evaluation.class_names)


@needs_real_data
def test_real_images_are_float32_in_unit_range_with_strokes_1(official):
    images = official.split("evaluation").images
    assert images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    # Strokes are 1 and background 0: most pixels are background, and every image has ink.
    assert images.mean() < 0.2
    # (thin strokes such as Braille dots peak at ~0.63 after resizing to 28px)
    assert (images.reshape(-1, 28 * 28).max(axis=1) > 0.5).all()
    assert (images == 1.0).any()
    assert (images[:, :, 0, 0, 0] < 0.05).mean() > 0.95  # corners are background


@needs_real_data
def test_real_image_matches_the_member_decoded_directly(official):
    pool = official.split("background")
    row = pool.class_names.index("Greek/character05")
    with zipfile.ZipFile(REAL_DATA / "omniglot" / "images_background.zip") as zf:
        members = sorted(n for n in zf.namelist() if n.startswith("images_background/Greek/character05/") and n.endswith(".png"))
        data = zf.read(members[3])
    expected = 1.0 - np.asarray(
        Image.open(io.BytesIO(data)).convert("L").resize((28, 28), Image.LANCZOS), dtype=np.float32
    ) / 255.0
    np.testing.assert_array_equal(pool.images[row, 3, :, :, 0], expected)


@needs_real_data
def test_real_maml_split_is_1100_100_423_disjoint_covering_and_pinned(maml, official):
    pools = {name: maml.split(name) for name in ("train", "val", "test")}
    assert {name: pool.num_classes for name, pool in pools.items()} == {"train": 1100, "val": 100, "test": 423}
    names = [set(pool.class_names) for pool in pools.values()]
    assert names[0].isdisjoint(names[1]) and names[0].isdisjoint(names[2]) and names[1].isdisjoint(names[2])
    assert set.union(*names) == set(official.characters())
    for name, pool in pools.items():
        assert pool.class_names == tuple(sorted(pool.class_names))
        assert hashlib.sha256("\n".join(pool.class_names).encode()).hexdigest() == MAML_DIGESTS[name], name
    # Same images whichever scheme served them.
    background = official.split("background")
    character = pools["test"].class_names[0]
    if official.archive_of(character) == "background":
        np.testing.assert_array_equal(
            pools["test"].images[0], background.images[background.class_names.index(character)]
        )


@needs_real_data
def test_real_vinyals_split_is_1028_172_423_1200(vinyals, official):
    pools = {name: vinyals.split(name) for name in vinyals.split_names()}
    assert {name: pool.num_classes for name, pool in pools.items()} == {
        "train": 1028, "val": 172, "test": 423, "trainval": 1200,
    }
    train, val, test, trainval = (set(pools[n].class_names) for n in ("train", "val", "test", "trainval"))
    assert trainval == train | val and train.isdisjoint(val)
    assert test.isdisjoint(trainval) and test | trainval == set(official.characters())
    assert {official.archive_of(c) for c in val} == {"background"}
    assert {official.archive_of(c) for c in test} == {"evaluation"}
    assert pools["val"].images.shape == (172, 20, 28, 28, 1)


@needs_real_data
def test_real_second_instantiation_loads_the_cache_without_decoding(real_cache, maml, monkeypatch):
    expected = maml.split("val")

    def no_decoding(*args):
        raise AssertionError("decoded although the cache was filled")

    monkeypatch.setattr(omniglot, "_decode_image", no_decoding)
    again = _real(real_cache, "maml").split("val")
    assert again.class_names == expected.class_names
    np.testing.assert_array_equal(again.images, expected.images)


# --- synthetic archives ---------------------------------------------------------------------

BACKGROUND = {"Alpha": 2, "Beta": 1}
EVALUATION = {"Gamma": 2}


def _png(seed: int, size: int = 20) -> bytes:
    """A mode-"1" PNG like Omniglot's: white background, a black square whose place depends on seed."""
    image = Image.new("1", (size, size), 1)
    top = 2 + seed % 8
    for y in range(top, top + 6):
        for x in range(5, 15):
            image.putpixel((x, y), 0)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _pattern(seed: int, size: int = 35) -> np.ndarray:
    """bool ``[size, size]``, True where the drawing is black (a stroke): a checkerboard whose cells
    widen from left to right (column x lies in cell ``x * x // 24``) and are 3 rows high, its phase
    set by ``seed``. No two columns, rows or seeds look alike, so a crop, shift or flip shows."""
    y, x = np.mgrid[:size, :size]
    return (x * x // 24 + y // 3 + seed) % 2 == 0


def _textured_png(seed: int, size: int = 35) -> bytes:
    """A mode-"1" PNG like Omniglot's (white background, black strokes) drawn with ``_pattern``."""
    image = Image.fromarray(~_pattern(seed, size)).convert("1")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _members(archive: str, alphabets: dict[str, int], images=20, drawing=_png):
    members = {}
    seed = 0
    for alphabet, count in alphabets.items():
        for c in range(1, count + 1):
            for j in range(1, images + 1):
                seed += 1
                members[f"images_{archive}/{alphabet}/character{c:02d}/{seed:04d}_{j:02d}.png"] = drawing(seed)
    return members


def _write_zip(path: Path, members: dict[str, bytes], extra=None, compression=zipfile.ZIP_DEFLATED):
    """A zip like the official one: directory entries, then ``members``; ``extra`` members last, as given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression) as zf:
        directories = set()
        for member in members:
            parts = member.split("/")[:-1]
            directories.update("/".join(parts[: i + 1]) + "/" for i in range(len(parts)))
        for name in sorted(directories):
            zf.writestr(name, b"")
        for name, data in {**members, **(extra or {})}.items():
            zf.writestr(name, data)


def make_omniglot(data_dir: Path, background=BACKGROUND, evaluation=EVALUATION, extra=None, folders=False, drawing=_png):
    """``data_dir/omniglot/images_{background,evaluation}.zip`` (or folders) with PNGs made by ``drawing(seed)``
    (20-pixel ones by default)."""
    root = data_dir / "omniglot"
    for archive, alphabets in (("background", background), ("evaluation", evaluation)):
        members = _members(archive, alphabets, drawing=drawing)
        if folders:
            for name, data in members.items():
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                (root / name).write_bytes(data)
        else:
            _write_zip(root / f"images_{archive}.zip", members, extra=(extra or {}).get(archive))
    return root


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


@pytest.fixture
def synthetic(tmp_path):
    make_omniglot(tmp_path / "data")
    return tmp_path / "data"


def _synthetic(data_dir, cache_dir, **kwargs):
    kwargs.setdefault("split_scheme", "official")
    kwargs.setdefault("image_size", 20)
    return Omniglot(data_dir, cache_dir=cache_dir, show_progress=False, **kwargs)


def test_synthetic_official_split_shapes_names_and_strokes(synthetic, tmp_path):
    dataset = _synthetic(synthetic, tmp_path / "cache")
    background = dataset.split("background")
    assert background.class_names == ("Alpha/character01", "Alpha/character02", "Beta/character01")
    assert background.images.shape == (3, 20, 20, 20, 1) and background.images.dtype == np.float32
    assert dataset.split("evaluation").class_names == ("Gamma/character01", "Gamma/character02")
    assert dataset.characters("evaluation") == ("Gamma/character01", "Gamma/character02")
    assert dataset.archive_of("Beta/character01") == "background"
    # No resize at S=20: the black square becomes exactly 1, the white background exactly 0.
    first = background.images[0, 0, :, :, 0]
    top = 2 + 1 % 8
    assert set(np.unique(first)) == {0.0, 1.0}
    assert (first[top : top + 6, 5:15] == 1.0).all() and first.sum() == 60
    # Images come in member order (<ID>_01 .. _20): image j of Alpha/character01 was drawn with seed j+1.
    assert background.images[0, 5, 2 + 6 % 8, 5, 0] == 1.0
    # Resizing keeps the range and the polarity.
    small = _synthetic(synthetic, tmp_path / "cache", image_size=8).split("background").images
    assert small.shape == (3, 20, 8, 8, 1) and 0.0 <= small.min() and small.max() <= 1.0
    assert small[..., 0, 0, 0].max() < 0.05 and small.max() > 0.9


def _expected_pixels(data: bytes, size: int, preprocess: str) -> np.ndarray:
    """One PNG as the loader must return it, computed here with Pillow: the whole image resized to
    ``size x size`` (LANCZOS on grey levels, or nearest-neighbour on the 1-bit pixels), never cropped."""
    with Image.open(io.BytesIO(data)) as image:
        if preprocess == "lanczos_inverted":
            return 1.0 - np.asarray(image.convert("L").resize((size, size), Image.LANCZOS), dtype=np.float32) / 255.0
        pixels = np.asarray(image.resize((size, size), Image.NEAREST).convert("L"), dtype=np.float32) / 255.0
    return 1.0 - pixels if preprocess == "nearest_binary_inverted" else pixels


@pytest.mark.parametrize("preprocess", omniglot.PREPROCESSING)
def test_textured_images_are_the_whole_drawing_resized(tmp_path, preprocess):
    make_omniglot(tmp_path / "data", drawing=_textured_png)
    members = {**_members("background", BACKGROUND, drawing=_textured_png), **_members("evaluation", EVALUATION, drawing=_textured_png)}
    for size in (35, 28, 12, 50):  # as drawn, down (28 as in training, 12 far down) and up
        dataset = _synthetic(tmp_path / "data", tmp_path / "cache", image_size=size, preprocess=preprocess)
        for archive in ("background", "evaluation"):
            pool = dataset.split(archive)
            assert pool.images.shape == (len(pool.class_names), 20, size, size, 1)
            for c, character in enumerate(pool.class_names):
                names = sorted(m for m in members if m.startswith(f"images_{archive}/{character}/"))
                for j, member in enumerate(names):
                    np.testing.assert_array_equal(
                        pool.images[c, j, :, :, 0], _expected_pixels(members[member], size, preprocess),
                        err_msg=f"{preprocess} {size}px {member}",
                    )
    # At the drawn size every preprocess keeps the pattern's geometry exactly (strokes 0 for "nearest_binary").
    drawn = _synthetic(tmp_path / "data", tmp_path / "cache", image_size=35, preprocess=preprocess).split("background")
    strokes = drawn.images[0, 0, :, :, 0] == (0.0 if preprocess == "nearest_binary" else 1.0)
    np.testing.assert_array_equal(strokes, _pattern(1))


def test_extracted_folders_give_the_same_images_as_the_zips(tmp_path):
    make_omniglot(tmp_path / "zips")
    make_omniglot(tmp_path / "folders", folders=True)
    from_zips = _synthetic(tmp_path / "zips", tmp_path / "cache").split("evaluation")
    from_folders = _synthetic(tmp_path / "folders", tmp_path / "cache").split("evaluation")
    assert from_folders.class_names == from_zips.class_names
    np.testing.assert_array_equal(from_folders.images, from_zips.images)


def test_construction_is_cheap_and_reads_no_members(synthetic, tmp_path, monkeypatch):
    def forbidden(*args):
        raise AssertionError("__init__ must not read the archives")

    monkeypatch.setattr(omniglot, "_list_members", forbidden)
    monkeypatch.setattr(omniglot, "_decode_image", forbidden)
    dataset = _synthetic(synthetic, tmp_path / "cache")
    assert dataset.split_names() == ("background", "evaluation")
    assert not (tmp_path / "cache").exists()


def test_second_instantiation_loads_the_cache_without_decoding(synthetic, tmp_path, monkeypatch):
    first = _synthetic(synthetic, tmp_path / "cache").split("background")
    assert len(list((tmp_path / "cache" / "omniglot").glob("*.npy"))) == 1

    def no_decoding(*args):
        raise AssertionError("decoded although the cache was filled")

    monkeypatch.setattr(omniglot, "_decode_image", no_decoding)
    second = _synthetic(synthetic, tmp_path / "cache").split("background")
    np.testing.assert_array_equal(second.images, first.images)


def _counting_decoder(monkeypatch):
    calls = []
    real = omniglot._decode_image

    def counted(data, size, *preprocess):
        calls.append(1)
        return real(data, size, *preprocess)

    monkeypatch.setattr(omniglot, "_decode_image", counted)
    return calls


def test_a_changed_key_rebuilds_the_cache(synthetic, tmp_path, monkeypatch):
    _synthetic(synthetic, tmp_path / "cache").split("background")
    calls = _counting_decoder(monkeypatch)
    _synthetic(synthetic, tmp_path / "cache").split("background")
    assert calls == []
    monkeypatch.setattr(omniglot, "PREPROCESS_VERSION", omniglot.PREPROCESS_VERSION + 1)
    _synthetic(synthetic, tmp_path / "cache").split("background")
    assert len(calls) == 5 * 20  # every character of both archives, once
    # New archive bytes -> new key -> new images.
    make_omniglot(synthetic, background={"Alpha": 2, "Beta": 2})
    rebuilt = _synthetic(synthetic, tmp_path / "cache").split("background")
    assert rebuilt.num_classes == 4 and len(calls) == 5 * 20 + 6 * 20


@pytest.mark.parametrize("damage", ["truncate_npy", "garbage_npy", "sidecar_key", "sidecar_json"])
def test_a_corrupt_or_stale_cache_is_rebuilt_with_a_warning(synthetic, tmp_path, monkeypatch, caplog, damage):
    expected = _synthetic(synthetic, tmp_path / "cache").split("background").images
    (npy,) = (tmp_path / "cache" / "omniglot").glob("*.npy")
    sidecar = npy.with_suffix(".json")
    if damage == "truncate_npy":
        npy.write_bytes(npy.read_bytes()[: npy.stat().st_size // 2])
    elif damage == "garbage_npy":
        npy.write_bytes(b"not an npy file")
    elif damage == "sidecar_key":
        sidecar.write_text(sidecar.read_text().replace('"key": "', '"key": "0'))
    else:
        sidecar.write_text("{not json")
    calls = _counting_decoder(monkeypatch)
    with caplog.at_level(logging.WARNING):
        again = _synthetic(synthetic, tmp_path / "cache").split("background")
    assert calls and "rebuilding" in caplog.text
    np.testing.assert_array_equal(again.images, expected)
    # The rebuilt cache is good again.
    calls.clear()
    _synthetic(synthetic, tmp_path / "cache").split("background")
    assert calls == []


def test_an_unwritable_cache_dir_warns_and_still_returns_images(synthetic, tmp_path, caplog):
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING):
        pool = _synthetic(synthetic, blocker).split("evaluation")
    assert pool.num_classes == 2 and "Could not write the cache" in caplog.text


# --- errors ---------------------------------------------------------------------------------


def test_truncated_zip(synthetic, tmp_path):
    path = synthetic / "omniglot" / "images_evaluation.zip"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DatasetError, match=r"images_evaluation\.zip.*truncated or corrupt; re-download.*sha256"):
        _synthetic(synthetic, tmp_path / "cache").split("background")


def test_empty_zip_file(synthetic, tmp_path):
    (synthetic / "omniglot" / "images_background.zip").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"images_background\.zip.*empty \(0 bytes\).*re-download"):
        _synthetic(synthetic, tmp_path / "cache").characters()


def test_zip_without_images(synthetic, tmp_path):
    _write_zip(synthetic / "omniglot" / "images_background.zip", {})
    with pytest.raises(DatasetError, match=r"images_background\.zip' holds no images"):
        _synthetic(synthetic, tmp_path / "cache").split("background")


def test_member_with_bad_crc(tmp_path):
    make_omniglot(tmp_path / "data")
    path = tmp_path / "data" / "omniglot" / "images_background.zip"
    _write_zip(path, _members("background", BACKGROUND), compression=zipfile.ZIP_STORED)
    data = bytearray(path.read_bytes())
    offset = data.index(b"IDAT") + 8  # inside the first PNG's stored bytes
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"images_background\.zip.*member 'images_background/Alpha.*re-download"):
        _synthetic(tmp_path / "data", tmp_path / "cache").split("background")


@pytest.mark.parametrize(
    "member, why",
    [
        ("images_background/../../escaped.png", r"'\.' or '\.\.' component"),
        ("/tmp/escaped.png", "absolute path"),
        ("C:/escaped.png", "absolute path"),
        ("images_background\\Alpha\\character09\\0001_01.png", "backslash"),
    ],
)
def test_unsafe_member_names_are_refused_and_nothing_is_written(tmp_path, member, why):
    make_omniglot(tmp_path / "data", extra={"background": {member: _png(1)}})
    before = _files(tmp_path)
    with pytest.raises(DatasetError, match=rf"refusing member {re.escape(repr(member))}, which (is|contains|has) (a |an )?{why}"):
        _synthetic(tmp_path / "data", tmp_path / "cache").split("background")
    assert _files(tmp_path) == before
    assert not (tmp_path / "escaped.png").exists() and not Path("/tmp/escaped.png").exists()


@pytest.mark.parametrize(
    "member",
    [
        "images_background/README.txt",
        "images_background/Alpha/character01/extra.png",
        "images_evaluation/Alpha/character01/0001_01.png",  # wrong archive
        "__MACOSX/images_background/._Alpha",
    ],
)
def test_unexpected_members_are_errors(tmp_path, member):
    make_omniglot(tmp_path / "data", extra={"background": {member: b"x"}})
    with pytest.raises(DatasetError, match=rf"unexpected member '{member}'; expected images_background/<Alphabet>"):
        _synthetic(tmp_path / "data", tmp_path / "cache").split("background")


def test_character_without_20_images(tmp_path):
    make_omniglot(tmp_path / "data")
    members = _members("background", BACKGROUND)
    del members["images_background/Beta/character01/0041_01.png"]
    _write_zip(tmp_path / "data" / "omniglot" / "images_background.zip", members)
    with pytest.raises(DatasetError, match=r"character 'Beta/character01' has 19 images, expected 20"):
        _synthetic(tmp_path / "data", tmp_path / "cache").split("evaluation")


def test_png_that_does_not_decode(tmp_path):
    make_omniglot(tmp_path / "data")
    members = _members("evaluation", EVALUATION)
    members["images_evaluation/Gamma/character02/0030_10.png"] = b"\x89PNG\r\n\x1a\n broken"
    _write_zip(tmp_path / "data" / "omniglot" / "images_evaluation.zip", members)
    with pytest.raises(DatasetError, match=r"member 'images_evaluation/Gamma/character02/0030_10\.png' is not a readable PNG"):
        _synthetic(tmp_path / "data", tmp_path / "cache").split("background")
    assert not list((tmp_path / "cache").rglob("*.npy"))


def test_character_in_both_archives(tmp_path):
    make_omniglot(tmp_path / "data", evaluation={"Alpha": 1})
    with pytest.raises(DatasetError, match=r"'Alpha/character01' is in both images_background and images_evaluation"):
        _synthetic(tmp_path / "data", tmp_path / "cache").characters()


def test_missing_archive(synthetic, tmp_path):
    (synthetic / "omniglot" / "images_evaluation.zip").unlink()
    with pytest.raises(DatasetError, match=r"Neither .*images_evaluation\.zip' nor the folder .*images_evaluation' exists"):
        _synthetic(synthetic, tmp_path / "cache")


def test_data_dir_is_a_file(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(DatasetError, match="is a file, not a directory"):
        Omniglot(tmp_path / "file")


def test_data_dir_without_omniglot_folder(tmp_path):
    with pytest.raises(DatasetError, match=r"has no omniglot/ folder.*images_background\.zip"):
        Omniglot(tmp_path)


def test_no_data_dir_and_no_environment_variable(monkeypatch):
    monkeypatch.delenv("METABENCH_DATA", raising=False)
    with pytest.raises(DatasetError, match=r"--data-dir DIR \(or set METABENCH_DATA=DIR\)"):
        Omniglot()


def test_data_dir_from_environment_variable(synthetic, tmp_path, monkeypatch):
    monkeypatch.setenv("METABENCH_DATA", str(synthetic))
    assert Omniglot(split_scheme="official", cache_dir=tmp_path / "c").characters("background")[0] == "Alpha/character01"


@pytest.mark.parametrize("size", [0, -3, 2.5, True, "28"])
def test_bad_image_size(synthetic, size):
    with pytest.raises(DatasetError, match=rf"Received: image_size={re.escape(repr(size))}, expected a positive integer"):
        Omniglot(synthetic, image_size=size)


def test_bad_split_scheme_and_split_name(synthetic, tmp_path):
    with pytest.raises(DatasetError, match=r"Received: split_scheme='mini', expected one of \['maml', 'mamlpp', 'official', 'vinyals'\]"):
        Omniglot(synthetic, split_scheme="mini")
    with pytest.raises(DatasetError, match=r"Received split='train', but omniglot has splits \['background', 'evaluation'\]"):
        _synthetic(synthetic, tmp_path / "cache").split("train")
    with pytest.raises(DatasetError, match=r"Received: archive='images_background'"):
        _synthetic(synthetic, tmp_path / "cache").characters("images_background")
    with pytest.raises(DatasetError, match=r"character='Alpha/character09', which is in neither"):
        _synthetic(synthetic, tmp_path / "cache").archive_of("Alpha/character09")


def test_maml_needs_1201_characters(synthetic, tmp_path):
    dataset = _synthetic(synthetic, tmp_path / "cache", split_scheme="maml")
    assert dataset.split_names() == ("train", "val", "test")
    with pytest.raises(DatasetError, match=r"split_scheme='maml' needs at least 1201 characters .* hold 5"):
        dataset.split("test")


def _write_vinyals(data_dir: Path, splits: dict[str, list[str]]):
    folder = data_dir / "omniglot" / "splits" / "vinyals"
    folder.mkdir(parents=True, exist_ok=True)
    for split, characters in splits.items():
        lines = [f"{c}/rot{r}" for c in characters for r in ("000", "090", "180", "270")]
        (folder / f"{split}.txt").write_text("".join(line + "\n" for line in lines))


VINYALS = {
    "train": ["Gamma/character02", "Alpha/character01"],
    "val": ["Beta/character01"],
    "test": ["Alpha/character02", "Gamma/character01"],
    "trainval": ["Gamma/character02", "Alpha/character01", "Beta/character01"],
}


def test_vinyals_split_from_files(synthetic, tmp_path):
    _write_vinyals(synthetic, VINYALS)
    dataset = _synthetic(synthetic, tmp_path / "cache", split_scheme="vinyals")
    assert dataset.split_names() == ("train", "val", "test", "trainval")
    train = dataset.split("train")
    assert train.class_names == ("Alpha/character01", "Gamma/character02")  # sorted, rotations dropped
    assert train.images.shape == (2, 20, 20, 20, 1)
    official = _synthetic(synthetic, tmp_path / "cache").split("evaluation")
    np.testing.assert_array_equal(train.images[1], official.images[1])
    assert dataset.split("trainval").num_classes == 3


def test_vinyals_missing_split_files(synthetic, tmp_path):
    _write_vinyals(synthetic, {"train": VINYALS["train"], "val": VINYALS["val"]})
    with pytest.raises(DatasetError, match=r"needs test\.txt, trainval\.txt in .*splits/vinyals'; copy .*prototypical-networks"):
        _synthetic(synthetic, tmp_path / "cache", split_scheme="vinyals")


def test_vinyals_unknown_character(synthetic, tmp_path):
    _write_vinyals(synthetic, {**VINYALS, "test": ["Alpha/character02", "Omega/character07"]})
    dataset = _synthetic(synthetic, tmp_path / "cache", split_scheme="vinyals")
    with pytest.raises(DatasetError, match=r"test\.txt names character 'Omega/character07', which is in neither archive"):
        dataset.split("test")


def test_vinyals_malformed_line(synthetic, tmp_path):
    _write_vinyals(synthetic, VINYALS)
    (synthetic / "omniglot" / "splits" / "vinyals" / "val.txt").write_text("Beta/character01/rot000\nBeta/character01/rot045\n")
    dataset = _synthetic(synthetic, tmp_path / "cache", split_scheme="vinyals")
    with pytest.raises(DatasetError, match=r"val\.txt' line 2: 'Beta/character01/rot045' is not"):
        dataset.split("val")
