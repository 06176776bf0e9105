"""Speed of the real MAML code path: the ``MAML`` algorithm, the ``conv4`` model and an engine's trainer.

``run_bench`` times meta-iterations on random Omniglot-shaped episodes (28x28x1, N-way K-shot, Q
queries per class), the same work as ``../shared/bench/torch_maml_anchor.py``, and returns the peer's
JSON keys plus peak memory. The first iteration (tracing and compilation) is timed apart, as
``first_iter_s``; ``ms_per_meta_iter`` is the mean over the next ``iters`` iterations, each ending
with the loss back on the host (the runner's loop reads it every iteration too).

Keras reads its backend once per process, at import: ``run_bench`` selects it before Keras is first
imported, so call it in a fresh process (``metabench bench``) or with the backend Keras already runs.

Example (not run as a doctest: the timings and the device differ per machine, and it compiles and
trains the full-size MAML for a minute; tests/test_bench.py runs it small):
    >>> from metabench.harness.run.bench import run_bench
    >>> run_bench("tensorflow", ways=5, shots=1, meta_batch=32, inner_steps=1, iters=10)  # doctest: +SKIP
    {'impl': 'metabench-maml-tensorflow-loop', 'device': 'CPU', 'ways': 5, ..., 'ms_per_meta_iter': 420.1, ...}
"""

from __future__ import annotations

import resource
import sys
import time

import numpy as np

from metabench.datasets.omniglot import Omniglot
from metabench.harness.config import FIXED_TABLES
from metabench.harness.data import episodes as ep
from metabench.harness.data.prefetch import Prefetcher
from metabench.harness.engines import get_engine, select_backend
from metabench.harness.errors import MetabenchError
from metabench.harness.run.session import compile_meta_step

#: The keys ``torch_maml_anchor.py`` prints, in its order; ``run_bench`` returns these and more.
PEER_KEYS = ("impl", "device", "ways", "shots", "queries", "meta_batch", "inner_steps",
             "first_iter_s", "ms_per_meta_iter", "meta_iters_per_s")


class BenchError(MetabenchError, ValueError):
    """A bench setting that cannot run; the message names the value and what is allowed."""


def run_bench(
    backend: str = "tensorflow",
    *,
    ways: int = 5,
    shots: int = 1,
    queries: int = 15,
    meta_batch: int = 32,
    inner_steps: int = 1,
    inner_lr: float = 0.4,
    iters: int = 10,
    first_order: bool = False,
    image_size: int = 28,
    filters: int = 64,
    conv: str = "native",
    dtype_policy: str = "float32",
    host_data: bool = False,
    matmul_precision: str = "default",
    engine_options: dict | None = None,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    split_scheme: str = "maml",
    prefetch: bool = True,
    seed: int = 0,
) -> dict:
    """Time ``iters`` MAML meta-iterations (after one untimed, compiled one) and return the figures.

    Args:
        backend: ``"tensorflow"`` or ``"jax"``; selected before Keras is imported.
        ways, shots, queries: the episode shape (queries per class).
        meta_batch: tasks per meta-iteration.
        inner_steps, inner_lr, first_order: MAML's inner loop, as in ``metabench.algorithms.maml.MAML``.
        iters: timed meta-iterations (the first, compiled one is extra).
        image_size, filters: the input side (1 channel) and conv4's width; 28 and 64 are Omniglot's.
        conv: conv4's convolutions, ``"native"`` or ``"matmul"`` (patches times a matrix; see
            ``metabench.algorithms.models.MatmulConv2D``).
        dtype_policy: conv4's ``"float32"`` or ``"mixed_bfloat16"`` (bfloat16 compute, float32 weights,
            logits and gradients).
        host_data: hand the trainer NumPy arrays each iteration (the runner's path, host-to-device copy
            included) rather than backend tensors made once (the peer's path: its data stay on the device).
        matmul_precision: ``"default"`` (each backend's own: TF32 convolutions may be used on Ampere
            and later GPUs, as in PyTorch's default) or ``"highest"`` (full float32 everywhere).
        engine_options: passed to the engine (``task_map``, ``parallel_tasks``, ``xla``, ...).
        data_dir: time a real Omniglot run instead: every iteration draws fresh episodes from the
            training split of ``DATA_DIR/omniglot`` (rotations per task, as the MAML code) and hands
            them to the trainer as NumPy arrays, made ahead on a thread as the runner makes them
            (``harness.data.prefetch``). The result adds ``data_ms_per_meta_iter`` (time to make one
            batch), ``data_wait_ms_per_meta_iter`` (time the loop waited for it),
            ``step_ms_per_meta_iter`` and ``data_wait_fraction`` (waiting's share of the loop's time).
        cache_dir: where Omniglot's decoded images are cached (default: the dataset's own choice).
        split_scheme: Omniglot's class split (``"maml"``: train on its ``train`` split; ``"official"``:
            on ``background``).
        prefetch: with ``data_dir``, False makes each batch in line, before its step (the loop then
            waits for all of it: the cost prefetching hides).

    Returns:
        A dict with ``PEER_KEYS`` and ``backend``, ``inner_lr``, ``first_order``, ``iters``,
        ``image_size``, ``filters``, ``conv``, ``dtype_policy``, ``host_data``, ``matmul_precision``,
        ``engine_options``, ``parallelism`` (the host thread pools and tasks in flight, where the
        engine sets them), ``loss`` (the last meta-training loss), ``rss_before_mib`` (peak host RSS
        before the first step), ``peak_rss_mib`` (peak host RSS at the end) and ``device_peak_mib`` (peak device memory
        where the backend reports it, else None).
    """
    _bench_iv(ways, shots, queries, meta_batch, inner_steps, inner_lr, iters, image_size, filters, matmul_precision, conv)
    if dtype_policy not in ("float32", "mixed_bfloat16"):
        raise BenchError(f"Received dtype_policy={dtype_policy!r}; expected 'float32' or 'mixed_bfloat16'.")
    select_backend(backend)
    # Deferred until after select_backend: Keras reads its backend once, at import.
    import keras

    from metabench.algorithms.maml import MAML
    from metabench.algorithms.models import conv4

    engine_options = dict(engine_options or {})
    engine = get_engine(backend, **engine_options)
    if matmul_precision == "highest":
        engine.set_matmul_precision("highest")
    model = conv4((image_size, image_size, 1), ways, filters=filters, conv=conv, dtype_policy=dtype_policy)
    set_numpy_weights(model, seed)
    maml = MAML(inner_lr=inner_lr, inner_steps=inner_steps, first_order=first_order).build(model, "classification", engine)
    _, trainer = compile_meta_step(maml, FIXED_TABLES["train"], engine)  # the step runs train, Adam 1e-3

    if data_dir is not None:
        next_batch = _omniglot_batches(data_dir, cache_dir, split_scheme, ways, shots, queries, meta_batch, image_size, seed)
    else:
        batch = random_batch(ways, shots, queries, meta_batch, image_size, seed)
        if not host_data:
            batch = {k: keras.ops.convert_to_tensor(v) for k, v in batch.items()}
        next_batch = lambda iteration: batch  # noqa: E731

    # Batches 1..iters are made as the runner makes them: the next one ahead, on a thread (the first
    # of them while the first iteration compiles), or in line.
    step_s = 0.0
    rss_before = _peak_rss_mib()
    started = time.perf_counter()
    with Prefetcher(next_batch, iters + 1, start=1) if prefetch and data_dir is not None else _InLine(next_batch) as batches:
        logs = trainer(next_batch(0))
        first = time.perf_counter() - started
        for iteration in range(1, iters + 1):
            batch = batches.get(iteration)
            started = time.perf_counter()
            logs = trainer(batch)
            step_s += time.perf_counter() - started
    wait_s = batches.wait_seconds
    per_iter = (wait_s + step_s) / iters
    device_peak = engine.device_memory_peak()
    extra = {}
    if data_dir is not None:
        extra = {
            "prefetch": bool(prefetch),
            "data_ms_per_meta_iter": round(batches.produce_seconds / iters * 1000, 2),
            "data_wait_ms_per_meta_iter": round(wait_s / iters * 1000, 2),
            "step_ms_per_meta_iter": round(step_s / iters * 1000, 2),
            "data_wait_fraction": round(wait_s / (wait_s + step_s), 4),
        }
    return {
        "impl": f"metabench-maml-{engine.name}-{engine.step_variant()}" + ("-matmul-conv" if conv == "matmul" else "")
        + ("-bf16" if dtype_policy == "mixed_bfloat16" else "")
        + ("-omniglot" if data_dir else ""),
        "device": engine.describe_device(),
        "ways": ways,
        "shots": shots,
        "queries": queries,
        "meta_batch": meta_batch,
        "inner_steps": inner_steps,
        "first_iter_s": round(first, 3),
        "ms_per_meta_iter": round(per_iter * 1000, 2),
        "meta_iters_per_s": round(1 / per_iter, 3),
        "backend": engine.name,
        "inner_lr": inner_lr,
        "first_order": bool(first_order),
        "iters": iters,
        "image_size": image_size,
        "filters": filters,
        "conv": conv,
        "dtype_policy": dtype_policy,
        "host_data": bool(host_data or data_dir is not None),
        "matmul_precision": matmul_precision,
        "engine_options": engine_options,
        "parallelism": engine.parallelism(),
        "loss": round(float(logs["loss"]), 6),
        "rss_before_mib": round(rss_before, 1),
        "peak_rss_mib": round(_peak_rss_mib(), 1),
        "device_peak_mib": None if device_peak is None else round(device_peak / 2**20, 1),
        **extra,
    }


def random_batch(ways: int, shots: int, queries: int, meta_batch: int, image_size: int = 28, seed: int = 0) -> dict:
    """A meta-batch in ``harness.data.episodes``' layout with uniform [0, 1) pixels (timing only, like the peer's)."""
    rng = np.random.default_rng(seed)

    def labels(per_class):
        return np.tile(np.repeat(np.arange(ways, dtype=np.int32), per_class), (meta_batch, 1))

    shape = (image_size, image_size, 1)
    return {
        "support_x": rng.random((meta_batch, ways * shots, *shape), dtype=np.float32),
        "support_y": labels(shots),
        "query_x": rng.random((meta_batch, ways * queries, *shape), dtype=np.float32),
        "query_y": labels(queries),
    }


def _omniglot_batches(data_dir, cache_dir, split_scheme, ways, shots, queries, meta_batch, image_size, seed):
    """``iteration -> batch`` of fresh Omniglot episodes, drawn as the runner's training data draws them."""
    omniglot = Omniglot(data_dir, image_size=image_size, split_scheme=split_scheme, cache_dir=cache_dir, show_progress=False)
    pool = omniglot.split("background" if split_scheme == "official" else "train")
    spec = ep.EpisodeSpec(ways, shots, queries)
    ep.check_classification_spec(pool, spec, "per_task", "omniglot")

    def batch(iteration):
        rng = ep.training_rng(seed, iteration)
        episodes = ep.sample_classification_episodes(pool, spec, meta_batch, rng, "per_task")
        return ep.materialize_classification(pool, episodes)

    return batch


class _InLine:
    """``Prefetcher``'s interface, making each batch when asked (all of its making is waiting)."""

    def __init__(self, make_batch):
        self._make_batch = make_batch
        self.wait_seconds = 0.0

    @property
    def produce_seconds(self) -> float:
        return self.wait_seconds

    def get(self, iteration: int):
        started = time.perf_counter()
        batch = self._make_batch(iteration)
        self.wait_seconds += time.perf_counter() - started
        return batch

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def set_numpy_weights(model, seed: int = 0) -> None:
    """Give ``model`` Glorot-uniform kernels drawn by NumPy from ``seed`` (other weights keep their
    initial values: zero biases, unit batch-norm scales), so every backend starts from the same point.

    (``keras.utils.set_random_seed`` would do for one backend, but its streams differ between
    backends, and it imports TensorFlow whenever TensorFlow is installed, also under JAX.)
    """
    rng = np.random.default_rng(seed)
    for variable in model.trainable_variables:
        shape = tuple(variable.shape)
        if len(shape) < 2:
            continue
        receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
        limit = np.sqrt(6.0 / (receptive * (shape[-2] + shape[-1])))
        variable.assign(rng.uniform(-limit, limit, size=shape).astype(variable.dtype))


def _bench_iv(ways, shots, queries, meta_batch, inner_steps, inner_lr, iters, image_size, filters, matmul_precision, conv):
    for name, value, least in (("ways", ways, 2), ("shots", shots, 1), ("queries", queries, 1), ("meta_batch", meta_batch, 1),
                               ("inner_steps", inner_steps, 1), ("iters", iters, 1), ("image_size", image_size, 4),
                               ("filters", filters, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise BenchError(f"Received {name}={value!r}; expected an integer >= {least}.")
    if not inner_lr > 0:
        raise BenchError(f"Received inner_lr={inner_lr!r}; expected a positive step size.")
    if matmul_precision not in ("default", "highest"):
        raise BenchError(f"Received matmul_precision={matmul_precision!r}; expected 'default' or 'highest'.")
    if conv not in ("native", "matmul"):
        raise BenchError(f"Received conv={conv!r}; expected 'native' or 'matmul'.")


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def format_table(result: dict) -> str:
    """The figures as aligned ``key  value`` lines, for a terminal."""
    width = max(len(k) for k in result)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in result.items())


__all__ = ["PEER_KEYS", "BenchError", "format_table", "random_batch", "run_bench", "set_numpy_weights"]
