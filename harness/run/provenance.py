"""Where a run computes and with what: device, library versions and source commit, and the store's
record of a run (:class:`~metabench.harness.results.records.RunInfo`) made from them."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path

from metabench.harness.registry import ALGORITHMS, DATASETS, MODELS
from metabench.harness.results.records import RunInfo


def run_details(engine, config: dict | None = None) -> dict:
    """Where a run computes: ``{"device", "versions", "git_commit"}`` (recorded at start and on resume)."""
    return {"device": engine.describe_device(), "versions": library_versions(config), "git_commit": git_commit()}


def run_info(config: dict, digest: str, details: dict) -> RunInfo:
    """The store's record of a run of ``config`` (hash ``digest``) computed where ``details`` says."""
    return RunInfo(
        algorithm=config["algorithm"]["name"],
        dataset=config["dataset"]["name"],
        seed=config["seed"],
        config=config,
        config_hash=digest,
        backend=config["backend"],
        device=details["device"],
        versions=details["versions"],
        git_commit=details["git_commit"],
    )


def library_versions(config: dict | None = None) -> dict:
    """Versions of the libraries a result depends on, and of every plugin distribution that
    provides one of ``config``'s components (its dataset, model or algorithm)."""
    versions = {"python": platform.python_version()}
    names = ["metabench", "keras", "tensorflow", "jax", "numpy"]
    if config is not None:
        for table, registry in (("algorithm", ALGORITHMS), ("dataset", DATASETS), ("model", MODELS)):
            source = registry.get(config[table]["name"]).source
            if source != "metabench" and source not in names:
                names.append(source)
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def git_commit() -> str | None:
    """The commit of the metabench source tree, with ``+dirty`` when it has local changes; None outside git."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain"], capture_output=True, text=True, timeout=5)
        return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None
