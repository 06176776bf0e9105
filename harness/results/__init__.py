"""Results: the records of a run, the store that keeps them, baseline files and bundles.

Everything here reads or writes results; nothing trains. ``DEFAULT_STORE`` lives in this light
``__init__`` so that the command line can name it in its help without loading pandas.
"""

DEFAULT_STORE = "reports/results.sqlite"
"""Where the results store is, relative to the working directory, unless ``--store`` says otherwise."""
