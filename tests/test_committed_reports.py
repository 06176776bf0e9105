"""The committed reports are exactly what the committed result bundles render to.

`reports/` holds generated tables and figures; `reports/runs/` holds the bundles (one
``.jsonl.gz`` per set of runs) they come from. This test renders the bundles again, as
`metabench report --from reports/runs --out reports --reproduction` does, and fails on any
difference, so a committed table can never drift from its data or be edited by hand.
"""

from pathlib import Path

import pytest

from metabench.harness.cli.main import main

REPO = Path(__file__).resolve().parents[1]
REPORTS = REPO / "reports"
BUNDLES = "reports/runs"
#: rasters depend on the font renderer; their SVG twins (and the HTML that inlines them) are compared
BINARY = {".png"}


def _files(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file() and "runs" not in p.relative_to(root).parts}


def test_committed_reports_are_rendered_from_the_committed_bundles(tmp_path, monkeypatch):
    if not (REPORTS / "runs").is_dir():
        pytest.fail("reports/runs/ is missing: the committed reports must come with the bundles they were rendered from")
    monkeypatch.chdir(REPO)  # the header names the bundles as the command line gave them
    assert main(["report", "--from", BUNDLES, "--out", str(tmp_path), "--reproduction"]) == 0
    rendered, committed = _files(tmp_path), _files(REPORTS)
    assert sorted(committed) == sorted(rendered), "reports/ holds files the bundles do not render, or lacks some"
    differing = [
        name for name, path in rendered.items()
        if path.suffix not in BINARY and path.read_bytes() != committed[name].read_bytes()
    ]
    assert not differing, (
        f"{differing} differ from what {BUNDLES} renders. Regenerate them with "
        f"`metabench report --from {BUNDLES} --out reports --reproduction`; never edit them by hand."
    )
