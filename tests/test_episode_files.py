"""Episode files as a public format (docs/episode-format.md): the fingerprint recomputed from the doc
alone, every validation rule with its message, and `metabench episodes export` / `verify` on sinusoid.

The Omniglot versions of the CLI tests are in test_omniglot_episodes.py (they need the data)."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from metabench.datasets.base import ClassPool
from metabench.harness.data import episodes as ep
from metabench.harness.cli.main import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "episode-format.md"


# --- The fingerprint as docs/episode-format.md describes it: json + hashlib + struct, no metabench ---

_ELEMENT = {"int8": "b", "int16": "h", "int32": "i", "int64": "q", "uint8": "B", "uint16": "H", "uint32": "I",
            "uint64": "Q", "float32": "f", "float64": "d"}  # fmt: skip


def _shape(data) -> tuple[int, ...]:
    shape = []
    while isinstance(data, list):
        shape.append(len(data))
        data = data[0] if data else None
    return tuple(shape)


def _elements(data):
    if isinstance(data, list):
        for item in data:
            yield from _elements(item)
    else:
        yield data


def fingerprint_from_doc(payload: dict) -> tuple[str, str]:
    """(index digest, fingerprint) of a parsed ``.json`` episode file, following the doc's byte layout."""
    header = {key: payload[key] for key in ("dataset", "split", "ways", "shots", "queries", "rotations")}
    header["pool"] = payload["pool_digest"]
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode("utf-8"))
    for name in sorted(payload["arrays"]):
        entry = payload["arrays"][name]
        shape = _shape(entry["data"])
        shape_text = "(" + ", ".join(str(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"
        values = list(_elements(entry["data"]))
        digest.update(name.encode("ascii"))
        digest.update((entry["dtype"] + shape_text).encode("ascii"))
        digest.update(struct.pack("<" + _ELEMENT[entry["dtype"]] * len(values), *values))
    index = digest.hexdigest()
    inputs = payload.get("inputs") or {}
    if not inputs:
        return index, index
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    composed = "metabench-evaluation-set/2\n" + index + "\n" + canonical
    return index, hashlib.sha256(composed.encode("utf-8")).hexdigest()


def rehash(payload: dict) -> dict:
    """``payload`` with its fingerprint recomputed, so only the rule under test can reject it."""
    payload["fingerprint"] = fingerprint_from_doc(payload)[1]
    return payload


# --- The doc itself ---


def _doc_example() -> tuple[dict, str, str]:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("<!-- worked-example"):]
    payload = json.loads(re.search(r"```json\n(.*?)\n```", section, re.S).group(1))
    index = re.search(r"- index digest: `([0-9a-f]{64})`", section).group(1)
    fingerprint = re.search(r"- fingerprint: `([0-9a-f]{64})`", section).group(1)
    return payload, index, fingerprint


def test_the_docs_worked_example_is_what_the_harness_and_the_doc_compute(tmp_path):
    payload, index, fingerprint = _doc_example()
    assert payload["fingerprint"] == fingerprint
    assert fingerprint_from_doc(payload) == (index, fingerprint)
    path = tmp_path / "example.json"
    path.write_text(json.dumps(payload))
    loaded = ep.EvaluationSet.load(path)
    assert (loaded.index_digest, loaded.fingerprint) == (index, fingerprint)
    pool = ClassPool("test", np.zeros((3, 2, 1, 1, 1), np.float32), ("a", "b", "c"))
    assert ep.pool_digest(pool) == payload["pool_digest"] == hashlib.sha256(b"a\nb\nc").hexdigest()
    # The doc's byte listing, its spaces and line breaks dropped, is exactly what the index digest hashes.
    section = DOC.read_text(encoding="utf-8").split("<!-- worked-example")[1]
    header, *rows = re.search(r"The bytes fed to the index digest.*?```\n(.*?)\n```", section, re.S).group(1).splitlines()
    fed = header.encode()
    for row in rows:
        name, dtype_shape, data = re.fullmatch(r"(\w+) +(\w+\([\d, ]+\)) +([0-9a-f ]+)", row).groups()
        fed += name.encode() + dtype_shape.encode() + bytes.fromhex(data.replace(" ", ""))
    assert len(rows) == 4 and hashlib.sha256(fed).hexdigest() == index
    # The doc's composed input line, with \n written out, is exactly what is hashed.
    composed = re.search(r"- composed input: `(.*?)`\n", DOC.read_text(encoding="utf-8")).group(1).replace("\\n", "\n")
    assert hashlib.sha256(composed.encode()).hexdigest() == fingerprint


def test_the_doc_lists_every_rule():
    text = DOC.read_text(encoding="utf-8")
    table = text[text.index("## Rules"):text.index("## What decides")]
    listed = re.findall(r"^\| `([a-z-]+)` \|", table, re.M)
    assert listed == list(ep.RULES)


# --- Validation rules: a tampered, re-hashed file is refused naming the rule and the episode ---


def _pool(classes=12, per_class=10):
    return ClassPool("test", np.zeros((classes, per_class, 2, 2, 1), np.float32), tuple(f"c{i:02d}" for i in range(classes)))


def _payload(tmp_path, rotations="per_task", pool=None, spec=ep.EpisodeSpec(3, 2, 2)) -> dict:
    pool = pool or _pool()
    inputs = ep.input_description({"name": "toy", "image_size": 2}, 1)
    eval_set = ep.classification_evaluation_set("toy", pool, spec, 6, seed=1, rotations=rotations, inputs=inputs)
    path = eval_set.save(tmp_path / "valid.json")
    payload = json.loads(path.read_text())
    assert fingerprint_from_doc(payload)[1] == eval_set.fingerprint == payload["fingerprint"]
    return payload


def _write(tmp_path, payload, name="tampered.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(payload))
    return path


def _arrays(payload):
    return {name: entry["data"] for name, entry in payload["arrays"].items()}


def _unused_image(payload, e, c):
    a = _arrays(payload)
    used = set(a["support"][e][c]) | set(a["query"][e][c])
    return min(set(range(payload["images_per_class"])) - used)


def _tamper_class_range(p):
    _arrays(p)["classes"][3][0] = 12


def _tamper_rotation_range(p):
    _arrays(p)["rotations"][3][1] = 4


def _tamper_image_range(p):
    _arrays(p)["support"][3][0][0] = 10


def _tamper_repeated_class(p):
    a = _arrays(p)
    a["classes"][3][1] = a["classes"][3][0]


def _tamper_repeated_support(p):
    a = _arrays(p)
    a["support"][3][1][1] = a["support"][3][1][0]


def _tamper_repeated_query(p):
    a = _arrays(p)
    a["query"][3][2][1] = a["query"][3][2][0]


def _tamper_query_reuses_support(p):
    a = _arrays(p)
    a["query"][3][0][0] = a["support"][3][0][0]


def _tamper_missing_query(p):
    del p["arrays"]["query"]


def _tamper_float_dtype(p):
    p["arrays"]["classes"]["dtype"] = "float64"


def _tamper_fractional_index(p):
    _arrays(p)["support"][3][0][0] = 1.5


def _tamper_shape(p):
    for per_class in _arrays(p)["support"][3]:
        per_class.pop()


def _tamper_episode_count(p):
    p["episodes"] = 7


def _tamper_ways(p):
    p["ways"] = 1


def _tamper_mode(p):
    p["rotations"] = "sideways"


def _tamper_format(p):
    p["format"] = "other-episodes/1"


def _tamper_inputs_name(p):
    p["inputs"]["dataset"]["name"] = "omniglot"


TAMPERS = [
    # (tamper, rule, episode the error names, part of the message)
    (_tamper_format, "format", None, r"not a metabench episode file \(format 'other-episodes/1'"),
    (_tamper_ways, "meta", None, r"rule 'meta': field 'ways' is 1; expected an integer >= 2"),
    (_tamper_mode, "meta", None, r"field 'rotations' is 'sideways'; expected one of"),
    (_tamper_inputs_name, "meta", None, r"field 'inputs'"),
    (_tamper_missing_query, "arrays", None, r"rule 'arrays': a classification file holds exactly the arrays"),
    (_tamper_float_dtype, "dtype", None, r"rule 'dtype': array 'classes' has dtype <f8; expected a little-endian integer"),
    (_tamper_fractional_index, "dtype", None, r"rule 'dtype': array 'support' says int64 but holds non-integer values"),
    (_tamper_shape, "shape", None, r"rule 'shape': array 'support' is not rectangular"),
    (_tamper_episode_count, "shape", None, r"rule 'shape': its meta says 7 episodes but its arrays hold 6"),
    (_tamper_class_range, "class-range", 3, r"episode 3 breaks rule 'class-range': classes \[12, .*must be in 0\.\.11"),
    (_tamper_rotation_range, "rotation-range", 3, r"episode 3 breaks rule 'rotation-range'.*quarter turns 0\.\.3"),
    (_tamper_image_range, "image-range", 3, r"episode 3 breaks rule 'image-range': class position 0 .*support images \[10, "
                                            r".*must be in 0\.\.9 \(10 images per class\)"),
    (_tamper_repeated_class, "distinct-classes", 3, r"episode 3 breaks rule 'distinct-classes': class \d+ appears twice"),
    (_tamper_repeated_support, "distinct-support", 3, r"episode 3 breaks rule 'distinct-support': class position 1 "
                                                      r"\(class \d+\) uses image \d+ twice in its support images"),
    (_tamper_repeated_query, "distinct-query", 3, r"episode 3 breaks rule 'distinct-query': class position 2 .* twice "
                                                  r"in its query images"),
    (_tamper_query_reuses_support, "support-query-disjoint", 3,
     r"episode 3 breaks rule 'support-query-disjoint': class position 0 \(class \d+\) uses image \d+ in both its support"),
]  # fmt: skip


@pytest.mark.parametrize("tamper, rule, episode, message", TAMPERS, ids=[t[0].__name__[8:] for t in TAMPERS])
def test_a_rehashed_file_that_breaks_a_rule_is_refused(tmp_path, tamper, rule, episode, message):
    payload = _payload(tmp_path)
    tamper(payload)
    if rule not in ("format", "meta", "arrays", "dtype", "shape"):
        rehash(payload)  # the fingerprint matches: only the rule can reject it
    with pytest.raises(ep.EpisodeFileError, match=message) as raised:
        ep.EvaluationSet.load(_write(tmp_path, payload))
    assert (raised.value.rule, raised.value.episode) == (rule, episode)


def test_rotation_mode_none_allows_no_turn(tmp_path):
    payload = _payload(tmp_path, rotations="none")
    _arrays(payload)["rotations"][3][1] = 2
    with pytest.raises(ep.EpisodeFileError, match=r"episode 3 breaks rule 'rotation-none': rotations \[0, 2, 0\] must all "
                                                   r"be 0 in rotation mode 'none'") as raised:
        ep.EvaluationSet.load(_write(tmp_path, rehash(payload)))
    assert raised.value.rule == "rotation-none"


def test_rotation_mode_classes_makes_class_rotation_pairs_the_classes(tmp_path):
    payload = _payload(tmp_path, rotations="classes")
    a = _arrays(payload)
    a["classes"][3][1] = a["classes"][3][0]
    a["rotations"][3][1] = (a["rotations"][3][0] + 1) % 4
    ep.EvaluationSet.load(_write(tmp_path, rehash(payload)))  # one character at two turns: two classes
    per_task = copy.deepcopy(payload)
    per_task["rotations"] = "per_task"
    with pytest.raises(ep.EpisodeFileError, match="episode 3 breaks rule 'distinct-classes'"):
        ep.EvaluationSet.load(_write(tmp_path, rehash(per_task)))
    a["rotations"][3][1] = a["rotations"][3][0]
    with pytest.raises(ep.EpisodeFileError, match=r"episode 3 breaks rule 'distinct-classes': \(class, rotation\) pair "
                                                   r"\(\d+, \d\) appears twice"):
        ep.EvaluationSet.load(_write(tmp_path, rehash(payload)))


def test_regression_values_must_be_finite(tmp_path):
    from metabench.datasets.sinusoid import Sinusoid

    eval_set = ep.regression_evaluation_set(Sinusoid(), ep.EpisodeSpec(None, 5, 10), 4, seed=2)
    payload = json.loads(eval_set.save(tmp_path / "tasks.json").read_text())
    assert fingerprint_from_doc(payload)[1] == eval_set.fingerprint == eval_set.index_digest
    payload["arrays"]["query_y"]["data"][2][3][0] = float("nan")
    with pytest.raises(ep.EpisodeFileError, match=r"episode 2 breaks rule 'finite': query_y holds NaN or infinite values"):
        ep.EvaluationSet.load(_write(tmp_path, rehash(payload)))
    payload["arrays"]["query_y"]["data"][2][3][0] = 0.5
    payload["arrays"]["query_x"]["data"][1].pop()
    with pytest.raises(ep.EpisodeFileError, match=r"rule 'shape'"):
        ep.EvaluationSet.load(_write(tmp_path, payload))


def test_an_edit_without_rehashing_breaks_the_fingerprint_rule(tmp_path):
    payload = _payload(tmp_path)
    _arrays(payload)["support"][3][0][0] = _unused_image(payload, 3, 0)  # still a valid episode
    with pytest.raises(ep.EpisodeFileError, match=r"rule 'fingerprint': it says fingerprint [0-9a-f]{12} but its episodes "
                                                   r"hash to [0-9a-f]{12}: the file was edited or damaged") as raised:
        ep.EvaluationSet.load(_write(tmp_path, payload))
    assert raised.value.rule == "fingerprint"


def test_the_issues_example_is_refused_by_its_first_broken_rule(tmp_path):
    """Query reuses the support image, a class repeats, an image index is 20 of 20: each is refused in rule order."""
    payload = _payload(tmp_path, pool=_pool(classes=30, per_class=20), spec=ep.EpisodeSpec(5, 1, 15))
    a = _arrays(payload)
    a["query"][0][0][0] = a["support"][0][0][0]
    a["classes"][0][1] = a["classes"][0][0]
    a["support"][0][2][0] = 20
    expected = [
        ("image-range", r"episode 0 breaks rule 'image-range': class position 2 \(class \d+\) has support images \[20\].*"
                        r"must be in 0\.\.19 \(20 images per class\)"),
        ("distinct-classes", r"episode 0 breaks rule 'distinct-classes': class \d+ appears twice in classes"),
        ("support-query-disjoint", r"episode 0 breaks rule 'support-query-disjoint': class position 0"),
    ]
    for rule, message in expected:
        with pytest.raises(ep.EpisodeFileError, match=message) as raised:
            ep.EvaluationSet.load(_write(tmp_path, rehash(payload)))
        assert raised.value.rule == rule
        if rule == "image-range":  # fix one violation at a time: the next rule speaks
            a["support"][0][2][0] = _unused_image(payload, 0, 2)
        elif rule == "distinct-classes":
            a["classes"][0][1] = min(set(range(30)) - set(a["classes"][0]))


def test_an_npz_file_is_checked_by_the_same_rules(tmp_path):
    payload = _payload(tmp_path)
    _tamper_query_reuses_support(payload)
    rehash(payload)
    meta = {k: v for k, v in payload.items() if k != "arrays"}
    arrays = {k: np.asarray(v["data"], dtype=v["dtype"]) for k, v in payload["arrays"].items()}
    path = tmp_path / "tampered.npz"
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)
    with pytest.raises(ep.EpisodeFileError, match="episode 3 breaks rule 'support-query-disjoint'"):
        ep.EvaluationSet.load(path)
    np.savez(path, meta=np.array(json.dumps(meta)), **dict(arrays, classes=arrays["classes"].astype(">i8")))
    with pytest.raises(ep.EpisodeFileError, match=r"rule 'dtype': array 'classes' has dtype >i8; expected a little-endian"):
        ep.EvaluationSet.load(path)


def test_a_file_written_before_the_pool_size_and_inputs_were_recorded_still_loads(tmp_path):
    payload = _payload(tmp_path)
    for key in ("num_classes", "images_per_class", "episodes", "inputs"):
        del payload[key]
    loaded = ep.EvaluationSet.load(_write(tmp_path, rehash(payload)))
    assert loaded.fingerprint == loaded.index_digest and loaded.num_classes is None
    _arrays(payload)["support"][3][0][0] = 10  # out of range for the pool, but the file cannot tell
    ep.EvaluationSet.load(_write(tmp_path, rehash(payload)))
    _arrays(payload)["support"][3][0][0] = -1
    with pytest.raises(ep.EpisodeFileError, match=r"episode 3 breaks rule 'image-range'.*must be in >= 0"):
        ep.EvaluationSet.load(_write(tmp_path, rehash(payload)))


def test_save_refuses_a_set_that_breaks_a_rule(tmp_path):
    eval_set = ep.classification_evaluation_set("toy", _pool(), ep.EpisodeSpec(3, 2, 2), 4, seed=1)
    eval_set.episodes.query[1, 0, 0] = eval_set.episodes.support[1, 0, 0]
    with pytest.raises(ep.EpisodeFileError, match="Evaluation set toy/test: episode 1 breaks rule 'support-query-disjoint'"):
        eval_set.save(tmp_path / "broken.json")
    assert not (tmp_path / "broken.json").exists()


def test_check_against_pool_names_a_different_class_list(tmp_path):
    eval_set = ep.EvaluationSet.load(_write(tmp_path, _payload(tmp_path)))
    ep.check_against_pool(eval_set, _pool(), "file", "the data")
    renamed = ClassPool("test", _pool().images, tuple(f"x{i:02d}" for i in range(12)))
    with pytest.raises(ep.EpisodeFileError, match=r"rule 'pool': its pool digest [0-9a-f]{12} is not the digest of split "
                                                   r"'test' in the data") as raised:
        ep.check_against_pool(eval_set, renamed, "file", "the data")
    assert raised.value.rule == "pool"
    bigger = ClassPool("test", np.zeros((12, 11, 2, 2, 1), np.float32), _pool().class_names)
    with pytest.raises(ep.EpisodeFileError, match=r"rule 'pool': it says images_per_class=10, but split 'test' in the data "
                                                   r"has images_per_class=11"):
        ep.check_against_pool(eval_set, bigger, "file", "the data")


# --- The CLI on sinusoid (no data needed) ---


def _printed_fingerprints(out: str) -> dict[str, str]:
    return dict(re.findall(r"wrote (\S+)\n  fingerprint  ([0-9a-f]{64})", out))


def test_export_writes_one_file_per_shot_count_and_verify_agrees(tmp_path, capsys):
    out = tmp_path / "sinusoid.json"
    assert main(["episodes", "export", "sinusoid_maml", "--out", str(out), "--set", "evaluation.episodes=20"]) == 0
    printed = _printed_fingerprints(capsys.readouterr().out)
    paths = [tmp_path / "sinusoid-5shot.json", tmp_path / "sinusoid-10shot.json"]
    assert sorted(printed) == sorted(str(p) for p in paths)
    for path in paths:
        payload = json.loads(path.read_text())
        # Recomputed from the doc alone, the fingerprint is the stored one and the printed one.
        assert fingerprint_from_doc(payload)[1] == payload["fingerprint"] == printed[str(path)]
        assert payload["kind"] == "regression" and payload["episodes"] == 20 and payload["inputs"] == {}
        assert main(["episodes", "verify", str(path)]) == 0
        shown = capsys.readouterr().out
        assert f"ok {path}: every rule holds" in shown and f"fingerprint  {printed[str(path)]}" in shown
        for line in ("dataset      sinusoid", "split        test", "episodes     20", "rotations    none"):
            assert line in shown
    assert "spec         10-shot (100 queries)" in shown


def test_export_one_setting_as_npz_and_the_json_outputs(tmp_path, capsys):
    out = tmp_path / "five.npz"
    assert main(["episodes", "export", "sinusoid_maml", "--out", str(out), "--shots", "5",
                 "--set", "evaluation.episodes=20", "--json"]) == 0  # fmt: skip
    sets = json.loads(capsys.readouterr().out)["sets"]
    assert [s["path"] for s in sets] == [str(out)] and sorted(p.name for p in tmp_path.iterdir()) == ["five.npz"]
    assert sets[0]["shots"] == 5 and sets[0]["episodes"] == 20 and sets[0]["spec"] == "5-shot (100 queries)"
    assert ep.EvaluationSet.load(out).fingerprint == sets[0]["fingerprint"]
    assert main(["episodes", "verify", str(out), "--json"]) == 0
    verified = json.loads(capsys.readouterr().out)
    assert verified["ok"] is True and verified["fingerprint"] == sets[0]["fingerprint"] and verified["episodes"] == 20
    # The .json export of the same set has the same identity.
    assert main(["episodes", "export", "sinusoid_maml", "--out", str(tmp_path / "five.json"), "--shots", "5",
                 "--set", "evaluation.episodes=20", "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["sets"][0]["fingerprint"] == sets[0]["fingerprint"]


def test_verify_exits_1_naming_the_rule_and_the_episode(tmp_path, capsys):
    payload = _payload(tmp_path)
    _tamper_query_reuses_support(payload)
    path = _write(tmp_path, rehash(payload))
    assert main(["episodes", "verify", str(path)]) == 1
    err = capsys.readouterr().err
    assert "metabench: error: Episode file" in err and "episode 3 breaks rule 'support-query-disjoint'" in err
    assert main(["episodes", "verify", str(path), "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] is False and result["rule"] == "support-query-disjoint" and result["episode"] == 3


@pytest.mark.parametrize("argv, message", [
    (["--out", "x.csv"], r"Received --out 'x.csv'; episode files end in .npz or .json"),
    (["--out", "x.json", "--shots", "3"], r"Received --shots 3, but shipped config 'sinusoid_maml' evaluates at shots \[5, 10\]"),
    (["--out", "x.json", "--set", "evaluation.seed=-1"], r"evaluation.seed=-1"),
])  # fmt: skip
def test_export_usage_errors_exit_2(tmp_path, capsys, argv, message):
    argv = [a.replace("x.", f"{tmp_path}/x.") for a in argv]
    assert main(["episodes", "export", "sinusoid_maml", *argv]) == 2
    assert re.search(message.replace("'x.csv'", f"'{tmp_path}/x.csv'"), capsys.readouterr().err)


def test_verify_with_a_missing_data_dir_is_a_usage_error(tmp_path, capsys):
    path = ep.EvaluationSet.load(_write(tmp_path, _payload(tmp_path), "valid.json"))
    assert main(["episodes", "verify", str(tmp_path / "valid.json"), "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert "which is not a directory" in capsys.readouterr().err
    assert path.fingerprint
