"""Running configs: preparation, the training loop, a run's lifecycle in the store, sweeps and benches.

``prepare`` (dataset and episode sets) -> ``session`` (model, algorithm, compiled steps) -> ``core``
(meta-train, evaluate) -> ``lifecycle`` (record, interrupt, resume). Every path that runs a config
(``metabench run``, sweeps, ``check --config``, the conformance suite) goes through ``core``.
"""
