"""`metabench episodes export` and `verify`: evaluation episodes as files another tool can use.

The file format, the index conventions and the fingerprint's byte layout are in
``docs/episode-format.md``. ``export`` writes the fixed evaluation sets a config would be evaluated
on; ``verify`` checks every rule of a file (and, with ``--data-dir``, that its indices point into
the split the data holds today) and prints the same identity.

Exit status: 0 when the file(s) are written or valid, 1 when ``verify`` finds a broken rule, 2 for
a usage error (a bad config, a missing data dir).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from metabench.datasets.base import DatasetError
from metabench.harness.config import TOP_LEVEL, read_raw_config, resolve_config
from metabench.harness.data.episodes import EpisodeError, EpisodeFileError, EvaluationSet, check_against_pool
from metabench.harness.engines import select_backend
from metabench.harness.registry import DATASETS, RegistryError


def register(commands) -> None:
    episodes = commands.add_parser("episodes", help="export the fixed evaluation episodes of a config, or verify an episode file")
    actions = episodes.add_subparsers(dest="episodes_command", required=True)

    export = actions.add_parser(
        "export", help="write a config's evaluation episodes to .npz or .json (format: docs/episode-format.md)",
        description="Write the fixed evaluation episodes of a config to FILE.npz or FILE.json. A config with several "
                    "evaluation shots has one set per shot count: each goes to FILE-<K>shot.<ext> (or choose one "
                    "with --shots K, written to FILE itself).",
    )
    export.add_argument("config", help="a config file or a shipped config name (metabench list)")
    export.add_argument("--out", required=True, metavar="FILE", help="FILE.npz or FILE.json")
    export.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set evaluation.episodes=100 (repeatable)")
    export.add_argument("--shots", type=int, metavar="K", help="only the set with K evaluation shots")
    export.add_argument("--data-dir", help="folder holding the datasets (default: $METABENCH_DATA)")
    export.add_argument("--cache-dir", help="folder for decoded-dataset caches (default: $METABENCH_CACHE or the user cache dir)")
    export.add_argument("--json", action="store_true", help="print {\"sets\": [identity, ...]} as one line of JSON")
    export.set_defaults(handler=_export)

    verify = actions.add_parser(
        "verify", help="check every rule of an episode file and print its identity",
        description="Check every rule of docs/episode-format.md and print the file's identity. With --data-dir, also "
                    "check that its dataset options load and that its pool digest is the one of that split in the "
                    "data. Exit 0: valid; 1: a rule is broken (the message names the rule and the episode).",
    )
    verify.add_argument("file", help="an episode file (.npz or .json)")
    verify.add_argument("--data-dir", help="also check the file against the dataset in DIR")
    verify.add_argument("--cache-dir", help="folder for decoded-dataset caches (default: $METABENCH_CACHE or the user cache dir)")
    verify.add_argument("--json", action="store_true", help="print the identity (or the broken rule) as one line of JSON")
    verify.set_defaults(handler=_verify)


def _export(args) -> int:
    out = Path(args.out)
    if out.suffix not in (".npz", ".json"):
        raise EpisodeError(f"Received --out {args.out!r}; episode files end in .npz or .json.")
    raw, origin = read_raw_config(args.config, args.overrides)
    select_backend(str(raw.get("backend", TOP_LEVEL["backend"])))  # before validation imports Keras
    config = resolve_config(raw, origin)
    # Deferred: `metabench --help` and `list` load no pandas, matplotlib or Keras (see metabench.harness.cli).
    from metabench.harness.run.prepare import prepare

    sets = {}
    prepared = prepare(config, args.data_dir, args.cache_dir)
    # With evaluation.prequential, the sets with their arrival order: what the prequential results are keyed by.
    for eval_set in prepared.prequential_sets or prepared.eval_sets:
        sets.setdefault(eval_set.spec.shots, eval_set)  # shots 0 and K resolve to the same set
    if args.shots is not None:
        if args.shots not in sets:
            raise EpisodeError(f"Received --shots {args.shots}, but {origin} evaluates at shots {sorted(sets)}.")
        sets = {args.shots: sets[args.shots]}
    out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for shots, eval_set in sets.items():
        path = out if len(sets) == 1 else out.with_name(f"{out.stem}-{shots}shot{out.suffix}")
        eval_set.save(path)
        written.append(dict(eval_set.identity(), path=str(path)))
    if args.json:
        print(json.dumps({"sets": written}))
    else:
        for number, identity in enumerate(written):
            print(("\n" if number else "") + f"wrote {identity['path']}")
            _print_identity(identity)
    return 0


def _verify(args) -> int:
    try:
        eval_set = EvaluationSet.load(args.file)
        data = _check_data(eval_set, args) if args.data_dir is not None else None
    except EpisodeFileError as error:
        if args.json:
            print(json.dumps({"ok": False, "path": args.file, "rule": error.rule, "episode": error.episode, "error": str(error)}))
        print(f"metabench: error: {error}", file=sys.stderr)
        return 1
    identity = dict(eval_set.identity(), path=args.file, data=data)
    if args.json:
        print(json.dumps(dict(identity, ok=True)))
    else:
        print(f"ok {args.file}: every rule holds")
        _print_identity(identity)
    return 0


def _check_data(eval_set, args) -> str:
    """Check ``eval_set`` against the dataset in ``--data-dir``; returns what was checked, in words."""
    where = f"Episode file {args.file!r}"
    if not Path(args.data_dir).expanduser().is_dir():  # a usage error (exit 2), not the file's fault
        raise DatasetError(f"Received --data-dir {args.data_dir!r}, which is not a directory; pass the folder that holds "
                           f"the {eval_set.dataset}/ data.")
    if eval_set.kind == "regression":
        return "not needed (a regression file holds its input values)"
    inputs = eval_set.inputs or {"dataset": {"name": eval_set.dataset}}
    options = {k: v for k, v in inputs["dataset"].items() if k != "name"}
    try:
        dataset = DATASETS.get(eval_set.dataset).factory(data_dir=args.data_dir, cache_dir=args.cache_dir, **options)
        version = getattr(dataset, "preprocess_version", None)
        if "preprocess_version" in inputs and version != inputs["preprocess_version"]:
            raise EpisodeFileError(
                f"{where} breaks rule 'inputs': its inputs say preprocess_version {inputs['preprocess_version']}, but "
                f"{eval_set.dataset} decodes with version {version} today, so the same indices give other pixels.", "inputs",
            )
        pool = dataset.split(eval_set.split)
    except (DatasetError, RegistryError, TypeError) as error:
        raise EpisodeFileError(
            f"{where} breaks rule 'inputs': its dataset {eval_set.dataset!r} with options {options} cannot be loaded "
            f"from {args.data_dir!r}: {error}", "inputs",
        ) from error
    source = f"{eval_set.dataset} under {args.data_dir}"
    check_against_pool(eval_set, pool, where, source)
    return (f"pool digest matches split {pool.name!r} of {source} ({pool.num_classes} classes, "
            f"{pool.images_per_class} images each)")


def _print_identity(identity: dict) -> None:
    inputs = identity["inputs"]
    if inputs:
        options = ", ".join(f"{k}={v}" for k, v in inputs["dataset"].items() if k != "name")
        dataset = f"{identity['dataset']} ({options}{'; ' if options else ''}preprocess v{inputs['preprocess_version']})"
    else:
        dataset = identity["dataset"]
    rows = [
        ("fingerprint", identity["fingerprint"]),
        ("dataset", dataset),
        ("split", identity["split"]),
        ("spec", identity["spec"]),
        ("rotations", identity["rotations"]),
        ("episodes", identity["episodes"]),
        ("seed", identity["seed"]),
    ]
    if identity.get("prequential"):
        rows.append(("arrivals", "seeded arrival order (prequential evaluation)"))
    if identity.get("data"):
        rows.append(("data", identity["data"]))
    for key, value in rows:
        print(f"  {key:<12} {value}")
