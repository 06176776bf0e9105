"""The docstring examples of harness/, algorithms/ and datasets/ run as written, module by module.

A module is found by the ``>>>`` in its source, so a new example is collected without touching this
file. Modules are imported under their installed names (``metabench.harness...``), never as loose
files, so a doctest sees the same module objects the code does. An example that cannot run here
carries ``# doctest: +SKIP`` with its reason beside it; every other line runs.
"""

from __future__ import annotations

import doctest
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"harness": "metabench.harness", "algorithms": "metabench.algorithms", "datasets": "metabench.datasets"}
OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
#: modules whose examples need Keras (and so a backend) by what they show: models, algorithms, engines
NEEDS_A_BACKEND = ("metabench.algorithms.", "metabench.harness.engines.", "metabench.harness.run.")


def _modules_with_examples() -> list[str]:
    found = []
    for folder, package in PACKAGES.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            if ">>>" in path.read_text(encoding="utf-8"):
                parts = path.relative_to(REPO / folder).with_suffix("").parts
                found.append(".".join((package, *(p for p in parts if p != "__init__"))))
    return found


MODULES = _modules_with_examples()


def _run_examples(name: str) -> tuple[int, int, int, str]:
    """(failed, run, found, report) of ``name``'s docstring examples, run in this process (``found``
    counts the ``+SKIP`` ones too)."""
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    report, found = [], 0
    for test in finder.find(module, name, globs=dict(vars(module))):
        found += len(test.examples)
        runner.run(test, out=report.append)
    results = runner.summarize(verbose=False)
    return results.failed, results.attempted, found, "".join(report)


def test_the_packages_have_examples_to_run():
    assert "metabench.harness.analysis.stats" in MODULES and "metabench.datasets.sinusoid" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run_as_written(name):
    failed, attempted, found, report = _run_examples(name)
    assert found > 0, f"{name} has '>>>' but no example doctest can find"
    assert failed == 0, f"{failed} of {attempted} examples of {name} failed:\n{report}"


def test_examples_of_pure_modules_import_no_backend():
    """Run in a fresh interpreter: the examples of modules that need no model import neither Keras,
    TensorFlow nor JAX (importing a backend costs seconds and belongs to the engines)."""
    pure = [name for name in MODULES if not name.startswith(NEEDS_A_BACKEND)]
    assert pure
    code = (
        "import json, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from test_doctests import _run_examples\n"
        "results = {name: _run_examples(name)[:3] for name in json.loads(sys.argv[2])}\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('keras', 'tensorflow', 'jax'))\n"
        "print(json.dumps({'results': results, 'heavy': heavy[:5]}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), json.dumps(pure)],
                          capture_output=True, text=True, timeout=300, check=True)  # fmt: skip
    payload = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(failed == 0 and found > 0 for failed, _, found in payload["results"].values()), payload["results"]
    assert payload["heavy"] == [], f"the examples of {pure} imported {payload['heavy']}"
