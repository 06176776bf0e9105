"""The ``metabench`` command line: ``main`` parses the arguments, one module per subcommand does the work.

Each subcommand module has ``register(subparsers)``; ``main`` lists them. A subcommand imports the
harness inside its handler, so ``metabench --help`` and ``metabench list`` answer without loading
pandas, matplotlib or TensorFlow (``tests/test_cli.py`` checks this).
"""

DEFAULT_REPORTS = "reports"
"""Where ``metabench report``, ``sweep`` and ``reproduce`` write their report by default."""
