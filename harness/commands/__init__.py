"""One module per `metabench` subcommand, each with ``register(subparsers)``; ``harness.cli`` lists them."""

DEFAULT_STORE = "reports/results.sqlite"
DEFAULT_REPORTS = "reports"
