"""Episode invariants on the real Omniglot test split (skipped only when the data dir is absent)."""

import numpy as np
import pytest

from metabench.datasets.omniglot import Omniglot
from metabench.harness.data import episodes as ep


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


# --- `metabench episodes export` / `verify` on the real test split, checked without metabench's code ---

OMNIGLOT_5W1S_FINGERPRINT = "88b067eaa37ba07d25919e6ddfe5b2f81f808e8f691066512e52e263ed7a5716"
"""The identity of the shipped omniglot_5way1shot_maml test episodes (official archives, 28 px, maml split)."""


@pytest.fixture(scope="module")
def exported(shared_data_dir, tmp_path_factory):
    """The shipped 5-way 1-shot config's test episodes, exported to .json; (path, payload, printed stdout)."""
    import contextlib
    import io
    import json

    from metabench.harness.cli.main import main

    path = tmp_path_factory.mktemp("episodes") / "omniglot-5w1s.json"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["episodes", "export", "omniglot_5way1shot_maml", "--out", str(path), "--data-dir", str(shared_data_dir)]) == 0
    return path, json.loads(path.read_text()), out.getvalue()


def test_export_prints_the_identity_an_outside_tool_recomputes(exported):
    from test_episode_files import fingerprint_from_doc

    path, payload, printed = exported
    assert f"wrote {path}\n  fingerprint  {OMNIGLOT_5W1S_FINGERPRINT}\n" in printed
    for line in ("dataset      omniglot (image_size=28, split_scheme=maml; preprocess v1)", "split        test",
                 "spec         5-way 1-shot (15 queries per class)", "rotations    per_task", "episodes     600"):  # fmt: skip
        assert line in printed
    assert fingerprint_from_doc(payload)[1] == payload["fingerprint"] == OMNIGLOT_5W1S_FINGERPRINT
    assert (payload["num_classes"], payload["images_per_class"], payload["episodes"]) == (423, 20, 600)
    assert payload["inputs"] == {"dataset": {"image_size": 28, "name": "omniglot", "split_scheme": "maml"}, "preprocess_version": 1}


@pytest.mark.slow  # 16 s (pytest -m slow)
def test_the_index_conventions_hold_on_the_raw_zips(exported, shared_data_dir):
    """Pool digest, class order, image index = drawing number - 1 and counter-clockwise rotation, read
    straight from the zips with Pillow (the doc's conventions), equal what the harness materializes."""
    import hashlib
    import io
    import zipfile

    from PIL import Image

    _, payload, _ = exported
    members = {}
    for archive in ("background", "evaluation"):
        with zipfile.ZipFile(shared_data_dir / "omniglot" / f"images_{archive}.zip") as zf:
            for name in zf.namelist():
                if name.endswith(".png"):
                    _, alphabet, character, file = name.split("/")
                    members.setdefault(f"{alphabet}/{character}", {})[int(file[-6:-4])] = (archive, name)
    names = sorted(members)
    test_names = [names[i] for i in sorted(np.random.default_rng(1).permutation(len(names))[1200:])]
    assert hashlib.sha256("\n".join(test_names).encode()).hexdigest() == payload["pool_digest"]

    def image(class_index, image_index, turns):
        archive, member = members[test_names[class_index]][image_index + 1]
        with zipfile.ZipFile(shared_data_dir / "omniglot" / f"images_{archive}.zip") as zf:
            with Image.open(io.BytesIO(zf.read(member))) as png:
                pixels = 1.0 - np.asarray(png.convert("L").resize((28, 28), Image.LANCZOS), dtype=np.float32) / 255.0
        return np.rot90(pixels, k=turns)

    episodes = ep.ClassificationEpisodes(**{k: np.asarray(v["data"]) for k, v in payload["arrays"].items()})
    e = int(np.flatnonzero(episodes.rotations[:, 0] == 1)[0])  # an episode whose first class is turned once
    batch = ep.materialize_classification(Omniglot(shared_data_dir, show_progress=False).split("test"), episodes, slice(e, e + 1))
    for n in range(5):
        c, turns = episodes.classes[e, n], episodes.rotations[e, n]
        np.testing.assert_array_equal(batch["support_x"][0, n, :, :, 0], image(c, episodes.support[e, n, 0], turns))
        for q in range(15):
            np.testing.assert_array_equal(batch["query_x"][0, n * 15 + q, :, :, 0], image(c, episodes.query[e, n, q], turns))
            assert batch["query_y"][0, n * 15 + q] == n


def test_verify_with_the_data_prints_the_same_identity(exported, shared_data_dir, capsys):
    from metabench.harness.cli.main import main

    path, _, _ = exported
    assert main(["episodes", "verify", str(path), "--data-dir", str(shared_data_dir)]) == 0
    out = capsys.readouterr().out
    assert f"ok {path}: every rule holds\n  fingerprint  {OMNIGLOT_5W1S_FINGERPRINT}\n" in out
    assert "pool digest matches split 'test' of omniglot" in out and "(423 classes, 20 images each)" in out


def test_the_issues_tampered_file_is_refused(exported, tmp_path, capsys):
    """Re-hashed: a query reusing the support image, a repeated class and image index 20 of 20."""
    import json

    from metabench.harness.cli.main import main
    from test_episode_files import rehash

    payload = json.loads(json.dumps(exported[1]))  # a copy: the module's export stays valid
    a = {k: v["data"] for k, v in payload["arrays"].items()}
    a["query"][7][0][0] = a["support"][7][0][0]
    a["classes"][7][1] = a["classes"][7][0]
    a["support"][7][2][0] = 20
    path = tmp_path / "tampered.json"
    path.write_text(json.dumps(rehash(payload)))
    with pytest.raises(ep.EpisodeFileError, match=r"episode 7 breaks rule 'image-range': class position 2 .*support images "
                                                   r"\[20\].*must be in 0\.\.19 \(20 images per class\)"):
        ep.EvaluationSet.load(path)
    assert main(["episodes", "verify", str(path)]) == 1
    assert "episode 7 breaks rule 'image-range'" in capsys.readouterr().err


@pytest.mark.parametrize("edit, rule, message", [
    (lambda p: p.update(pool_digest="0" * 64), "pool", r"its pool digest 000000000000 is not the digest of split 'test' in "
                                                       r"omniglot under .* \(\w{12}, 423 classes\)"),
    (lambda p: p.update(images_per_class=25), "pool", r"it says images_per_class=25, but split 'test' .* has images_per_class=20"),
    (lambda p: p["inputs"]["dataset"].update(split_scheme="vinyals"), "pool", r"is not the digest of split 'test'"),
    (lambda p: p["inputs"]["dataset"].update(split_scheme="official"), "inputs", r"cannot be loaded .*Received split='test'"),
    (lambda p: p["inputs"]["dataset"].update(colour=True), "inputs", r"rule 'inputs': its dataset 'omniglot' with options "
                                                                     r"\{.*'colour': True.*\} cannot be loaded"),
    (lambda p: p["inputs"].update(preprocess_version=7), "inputs", r"its inputs say preprocess_version 7, but omniglot "
                                                                   r"decodes with version 1 today"),
], ids=["pool-digest", "images-per-class", "other-split-scheme", "no-test-split", "unknown-option", "preprocess-version"])  # fmt: skip
def test_verify_with_the_data_refuses_a_file_for_another_pool(exported, shared_data_dir, tmp_path, capsys, edit, rule, message):
    import copy
    import json
    import re

    from metabench.harness.cli.main import main
    from test_episode_files import rehash

    payload = copy.deepcopy(exported[1])
    edit(payload)
    path = tmp_path / "other.json"
    path.write_text(json.dumps(rehash(payload)))
    ep.EvaluationSet.load(path)  # a well-formed file on its own
    assert main(["episodes", "verify", str(path), "--data-dir", str(shared_data_dir), "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["rule"] == rule and re.search(message, result["error"]), result["error"]
