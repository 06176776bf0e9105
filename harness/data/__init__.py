"""Data: what a run reads, made reproducible.

The fixed evaluation episode sets with their fingerprints and episode files (``episodes``), the
meta-training batches as a function of (seed, iteration) (``training_data``), and the thread that
makes the next batch while a step computes (``prefetch``). Imports the foundation and
``metabench.datasets`` only; never an engine, the store or Keras.
"""
