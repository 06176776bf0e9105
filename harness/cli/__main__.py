"""``python -m metabench.harness.cli``: the ``metabench`` command."""

import sys

from metabench.harness.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
