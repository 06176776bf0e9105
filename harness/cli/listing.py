"""`metabench list`: registered algorithms, datasets, models and the shipped configs."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from metabench.harness.config import shipped_configs
from metabench.harness.registry import ALGORITHMS, DATASETS, MODELS


def register(commands) -> None:
    listing = commands.add_parser("list", help="registered algorithms, datasets, models and the shipped configs")
    listing.set_defaults(handler=_list)


def _list(args) -> int:
    console = Console()
    for title, registry in (("algorithms", ALGORITHMS), ("datasets", DATASETS), ("models", MODELS)):
        table = Table(title=title)
        for column in ("name", "options (defaults)", "summary", "from"):
            table.add_column(column)
        for entry in registry.entries():
            options = ", ".join(f"{k}={v!r}" for k, v in entry.defaults.items())
            table.add_row(entry.name, options, entry.summary, entry.source)
        console.print(table)
    table = Table(title="shipped configs (metabench run NAME)")
    table.add_column("name")
    table.add_column("description")
    for name, description in shipped_configs().items():
        table.add_row(name, description)
    console.print(table)
    return 0
