"""Checkpoints of a meta-training run: everything needed to continue it bit for bit.

A checkpoint holds the algorithm's weights (:meth:`Algorithm.get_weights`: the meta-parameters,
including learned inner learning rates where an algorithm has them, then its state variables such
as per-step batch-norm statistics), the model's other non-trainable variables, the outer
optimizer's variables (Adam's moments and its iteration count, which also drives a cosine
schedule), the meta-iteration reached, the Python and NumPy global RNG states, the training curve
so far with its partly filled logging window, and the NaN-retry state. Training batches are a
function of ``(seed, iteration)`` only (:mod:`metabench.harness.data.training_data`), so the iteration
is also the episode sampler's position.

Files, in a run's checkpoint folder (``<store folder>/checkpoints/<run_id>/`` by default)::

    ckpt-00001000.npz    the arrays (np.savez, no pickles; read back with allow_pickle=False)
    ckpt-00001000.json   sidecar: format, run id, config hash, iteration, the npz's sha256, curve state...
    lock                 locked (flock) by the process that trains the run

Each file is written under a temporary name in the same folder, flushed to disk and renamed onto
its final name (``os.replace``, atomic on POSIX). The sidecar is written last and names the
sha256 of the arrays, so a checkpoint counts only when both files are there and agree; a process
killed mid-write leaves at worst a temporary file, which the next save removes. The newest
:data:`KEEP` checkpoints are kept. A write that fails (a full disk) removes what it wrote and leaves
the previous checkpoints as they were.

Example::

    folder = CheckpointFolder("reports/checkpoints/20260101-120000-0a1b2c3d")
    with folder.locked("20260101-120000-0a1b2c3d"):
        folder.save(capture(algorithm, optimizer, state, run_id=run_id, config_hash=digest))
        latest = folder.latest(run_id=run_id, config_hash=digest)  # None when there is none
        state = restore(algorithm, optimizer, latest)
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import errno
import hashlib
import io
import json
import logging
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np

try:
    import fcntl
except ImportError:  # not POSIX: checkpoint folders are not locked
    fcntl = None

from metabench.harness.results.records import CurvePoint
from metabench.harness.results.store import StoreError

logger = logging.getLogger(__name__)

FORMAT = "metabench-checkpoint"
FORMAT_VERSION = 1
"""Version of the file layout; a checkpoint of another version is refused by name."""

KEEP = 2
"""How many of the newest checkpoints a folder keeps."""

_NAME = re.compile(r"ckpt-(\d{8,})\.json")


class CheckpointError(StoreError):
    """A checkpoint cannot be written or read; the message names the file and the problem.

    A subclass of :class:`StoreError`: checkpoints are the run-state half of what the runner
    stores, and the command line reports both as user errors.
    """


@dataclasses.dataclass
class TrainingState:
    """Where meta-training stands, apart from the weights.

    Attributes:
        iteration: meta-iterations done; the next batch is ``source.batch(iteration)``.
        curve: logged points so far.
        window_loss: outer losses of the iterations since the last logged point.
        window_metric: their training metrics.
        last_finite: the last finite outer loss (``None`` before the first iteration).
        seconds: training wall time of the iterations done (the curve's time axis).
        lr_scale: factor on the configured meta learning rate (below 1 after a NaN retry).
        nan_retries: NaN retries used so far.
        data_wait_seconds: the part of ``seconds`` the loop spent waiting for its next batch.
    """

    iteration: int = 0
    curve: list = dataclasses.field(default_factory=list)
    window_loss: list = dataclasses.field(default_factory=list)
    window_metric: list = dataclasses.field(default_factory=list)
    last_finite: float | None = None
    seconds: float = 0.0
    lr_scale: float = 1.0
    nan_retries: int = 0
    data_wait_seconds: float = 0.0


@dataclasses.dataclass
class Checkpoint:
    """One checkpoint in memory (what :func:`capture` takes and :func:`restore` puts back)."""

    run_id: str
    config_hash: str
    state: TrainingState
    weights: list
    model_variables: list
    optimizer_variables: list
    optimizer_names: list
    rng: dict


def capture(algorithm, optimizer, state: TrainingState, *, run_id: str, config_hash: str) -> Checkpoint:
    """Copy everything :func:`restore` needs out of a built algorithm and its outer optimizer."""
    slots = _optimizer_slots(optimizer)
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    return Checkpoint(
        run_id=run_id,
        config_hash=config_hash,
        state=copy.deepcopy(state),
        weights=[np.array(w, copy=True) for w in algorithm.get_weights()],
        model_variables=[_to_numpy(v) for v in _model_extras(algorithm)],
        optimizer_variables=[_to_numpy(v) for _, v in slots],
        optimizer_names=[name for name, _ in slots],
        rng={
            "python": [python_state[0], list(python_state[1]), python_state[2]],
            "numpy": {
                "kind": numpy_state[0],
                "key": np.asarray(numpy_state[1], dtype=np.uint32),
                "pos": int(numpy_state[2]),
                "has_gauss": int(numpy_state[3]),
                "cached_gaussian": float(numpy_state[4]),
            },
        },
    )


def restore(algorithm, optimizer, checkpoint: Checkpoint) -> TrainingState:
    """Put a checkpoint's weights, optimizer variables and RNG states back; returns its training state.

    The optimizer's learning rate is not restored: it follows the config and ``lr_scale``.

    Raises:
        CheckpointError: the checkpoint was written for another model, algorithm or optimizer.
    """
    where = f"checkpoint of run {checkpoint.run_id} at meta-iteration {checkpoint.state.iteration}"
    try:
        algorithm.set_weights(checkpoint.weights)
    except ValueError as err:
        raise CheckpointError(f"The {where} does not fit this algorithm: {err}. It was written for another config.") from err
    extras = _model_extras(algorithm)
    slots = _optimizer_slots(optimizer)
    if len(extras) != len(checkpoint.model_variables) or len(slots) != len(checkpoint.optimizer_variables):
        raise CheckpointError(
            f"The {where} holds {len(checkpoint.model_variables)} model and {len(checkpoint.optimizer_names)} optimizer "
            f"variables, but this run has {len(extras)} and {len(slots)}. It was written for another config."
        )
    pairs = list(zip(extras, checkpoint.model_variables)) + [(v, a) for (_, v), a in zip(slots, checkpoint.optimizer_variables)]
    for variable, value in pairs:
        if tuple(variable.shape) != tuple(value.shape):
            raise CheckpointError(
                f"The {where} has shape {tuple(value.shape)} for {variable.path}, which has shape "
                f"{tuple(variable.shape)} here. It was written for another config."
            )
    for variable, value in pairs:
        variable.assign(value)
    python_state = checkpoint.rng["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    numpy_state = checkpoint.rng["numpy"]
    np.random.set_state(
        (numpy_state["kind"], numpy_state["key"], numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"])
    )
    return copy.deepcopy(checkpoint.state)


class CheckpointFolder:
    """The checkpoints of one run: atomic saves, the newest :data:`KEEP` kept, a lock for its trainer.

    Args:
        path: the run's folder, e.g. ``reports/checkpoints/<run_id>``; created on the first save.
        keep: how many of the newest checkpoints to keep (at least 1).
    """

    def __init__(self, path: str | os.PathLike, keep: int = KEEP):
        if keep < 1:
            raise ValueError(f"Received keep={keep}; a checkpoint folder keeps at least 1 checkpoint.")
        self.path = Path(path)
        self.keep = keep
        self._lock_fd: int | None = None

    def __repr__(self) -> str:
        return f"CheckpointFolder({str(self.path)!r})"

    # ------------------------------------------------------------------ writing

    def save(self, checkpoint: Checkpoint) -> Path:
        """Write ``checkpoint`` atomically, then delete all but the newest ``keep``; returns the sidecar's path.

        A checkpoint of an iteration that is already saved is not written again (the state at an
        iteration is the same whenever it is reached).

        Raises:
            CheckpointError: the folder cannot be created or a file cannot be written (disk full,
                permissions). Nothing of the new checkpoint is left behind; older ones are intact.
        """
        state = checkpoint.state
        stem = f"ckpt-{state.iteration:08d}"
        sidecar_path, arrays_path = self.path / f"{stem}.json", self.path / f"{stem}.npz"
        if sidecar_path.exists() and self._readable(sidecar_path):
            return sidecar_path
        arrays = {f"weight_{i:04d}": w for i, w in enumerate(checkpoint.weights)}
        arrays.update({f"model_{i:04d}": v for i, v in enumerate(checkpoint.model_variables)})
        arrays.update({f"optimizer_{i:04d}": v for i, v in enumerate(checkpoint.optimizer_variables)})
        arrays["numpy_rng_key"] = checkpoint.rng["numpy"]["key"]
        arrays["python_rng_state"] = np.asarray(checkpoint.rng["python"][1], dtype=np.int64)
        arrays["curve"] = np.array([[p.iteration, p.loss, p.metric, p.seconds] for p in state.curve], dtype=np.float64).reshape(-1, 4)
        arrays["window"] = np.array([state.window_loss, state.window_metric], dtype=np.float64).reshape(2, -1)
        for name, array in arrays.items():
            if np.asarray(array).dtype == object:
                raise CheckpointError(f"Checkpoint array {name} of run {checkpoint.run_id} is not numeric; checkpoints hold no pickles.")
        wrote_arrays = False
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._remove_temporary_files()
            digest = _write_atomic(arrays_path, lambda f: np.savez(f, allow_pickle=False, **arrays))
            wrote_arrays = True
            sidecar = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "run_id": checkpoint.run_id,
                "config_hash": checkpoint.config_hash,
                "iteration": int(state.iteration),
                "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "arrays": arrays_path.name,
                "sha256": digest,
                "counts": {
                    "weights": len(checkpoint.weights),
                    "model_variables": len(checkpoint.model_variables),
                    "optimizer_variables": len(checkpoint.optimizer_variables),
                },
                "optimizer_names": list(checkpoint.optimizer_names),
                "rng": {  # the two state vectors are arrays in the npz
                    "python": {"version": checkpoint.rng["python"][0], "gauss_next": checkpoint.rng["python"][2]},
                    "numpy": {k: v for k, v in checkpoint.rng["numpy"].items() if k != "key"},
                },
                "last_finite": state.last_finite,
                "seconds": float(state.seconds),
                "lr_scale": float(state.lr_scale),
                "nan_retries": int(state.nan_retries),
                "data_wait_seconds": float(state.data_wait_seconds),
            }
            text = json.dumps(sidecar, indent=1, allow_nan=False).encode()
            _write_atomic(sidecar_path, lambda f: f.write(text))
        except OSError as err:
            if wrote_arrays:  # its sidecar never landed: the arrays alone are not a checkpoint
                with contextlib.suppress(OSError):
                    arrays_path.unlink()
            previous = self.iterations()
            kept = (
                f"The previous checkpoint (meta-iteration {previous[-1]}) is intact."
                if previous else "There is no earlier checkpoint of this run."
            )
            full = " The disk is full: free space or pass another --checkpoint-dir." if err.errno == errno.ENOSPC else ""
            raise CheckpointError(
                f"Could not write checkpoint {stem} of run {checkpoint.run_id} in {self.path}: "
                f"{err.strerror or err}.{full} {kept}"
            ) from err
        self._prune()
        logger.debug("Saved checkpoint %s (meta-iteration %d).", sidecar_path, state.iteration)
        return sidecar_path

    def remove(self) -> None:
        """Delete the folder and every checkpoint in it (a completed run needs none)."""
        shutil.rmtree(self.path, ignore_errors=True)

    # ------------------------------------------------------------------ reading

    def iterations(self) -> list[int]:
        """Meta-iterations of the checkpoints whose sidecar is present, oldest first."""
        if not self.path.is_dir():
            return []
        found = (_NAME.fullmatch(p.name) for p in self.path.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def load(self, iteration: int) -> Checkpoint:
        """The checkpoint saved at ``iteration``, checked against its sidecar.

        Raises:
            CheckpointError: a file is missing, truncated or altered (sha256 mismatch), not a
                metabench checkpoint, of another format version, or would need pickles.
        """
        stem = f"ckpt-{int(iteration):08d}"
        sidecar_path = self.path / f"{stem}.json"
        try:
            meta = json.loads(sidecar_path.read_text())
        except (OSError, ValueError) as err:
            raise CheckpointError(f"Cannot read checkpoint sidecar {sidecar_path}: {err}.") from err
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CheckpointError(f"{sidecar_path} is not a metabench checkpoint sidecar.")
        if meta.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(
                f"{sidecar_path} has checkpoint format version {meta.get('format_version')}, but this metabench "
                f"reads version {FORMAT_VERSION}. Resume it with the metabench version that wrote it."
            )
        arrays_path = self.path / str(meta.get("arrays", f"{stem}.npz"))
        try:
            data = arrays_path.read_bytes()
        except OSError as err:
            raise CheckpointError(f"Cannot read checkpoint arrays {arrays_path}: {err}.") from err
        if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
            raise CheckpointError(
                f"Checkpoint arrays {arrays_path} do not match the sha256 in {sidecar_path.name} "
                "(truncated or altered since they were written)."
            )
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
            counts = meta["counts"]
            weights = [arrays[f"weight_{i:04d}"] for i in range(counts["weights"])]
            model_variables = [arrays[f"model_{i:04d}"] for i in range(counts["model_variables"])]
            optimizer_variables = [arrays[f"optimizer_{i:04d}"] for i in range(counts["optimizer_variables"])]
            curve = [CurvePoint(int(row[0]), float(row[1]), float(row[2]), float(row[3])) for row in arrays["curve"]]
            window = arrays["window"]
            state = TrainingState(
                iteration=int(meta["iteration"]),
                curve=curve,
                window_loss=[float(x) for x in window[0]],
                window_metric=[float(x) for x in window[1]],
                last_finite=meta["last_finite"],
                seconds=float(meta["seconds"]),
                lr_scale=float(meta["lr_scale"]),
                nan_retries=int(meta["nan_retries"]),
                data_wait_seconds=float(meta.get("data_wait_seconds", 0.0)),  # older checkpoints lack it
            )
            python_rng = meta["rng"]["python"]
            rng = {
                "python": [python_rng["version"], [int(x) for x in arrays["python_rng_state"]], python_rng["gauss_next"]],
                "numpy": {**meta["rng"]["numpy"], "key": arrays["numpy_rng_key"]},
            }
        except (KeyError, TypeError, IndexError, ValueError) as err:  # ValueError: an object array (pickle) or a bad zip
            raise CheckpointError(f"Checkpoint {arrays_path} is malformed or would need pickles to read: {err}.") from err
        return Checkpoint(
            run_id=str(meta.get("run_id")),
            config_hash=str(meta.get("config_hash")),
            state=state,
            weights=weights,
            model_variables=model_variables,
            optimizer_variables=optimizer_variables,
            optimizer_names=list(meta["optimizer_names"]),
            rng=rng,
        )

    def latest(self, *, run_id: str | None = None, config_hash: str | None = None) -> Checkpoint | None:
        """The newest checkpoint that reads back intact; ``None`` when the folder has none.

        A damaged checkpoint is skipped with a warning for the one before it.

        Raises:
            CheckpointError: there are checkpoints but none reads back, or the newest readable
                one belongs to another run or config.
        """
        iterations = self.iterations()
        problems = []
        for iteration in reversed(iterations):
            try:
                checkpoint = self.load(iteration)
            except CheckpointError as err:
                logger.warning("Skipping a damaged checkpoint: %s", err)
                problems.append(str(err))
                continue
            if run_id is not None and checkpoint.run_id != run_id:
                raise CheckpointError(
                    f"The checkpoints in {self.path} belong to run {checkpoint.run_id}, not {run_id}. "
                    "Pass the checkpoint folder of that run."
                )
            if config_hash is not None and checkpoint.config_hash != config_hash:
                raise CheckpointError(
                    f"The checkpoints in {self.path} were written for config hash {checkpoint.config_hash[:12]}, "
                    f"not {config_hash[:12]}; a run resumes only with the config it started with."
                )
            return checkpoint
        if problems:
            raise CheckpointError(
                f"None of the {len(problems)} checkpoint(s) in {self.path} reads back intact ({problems[0]}). "
                f"Delete {self.path} to train the run again from the start."
            )
        return None

    # ------------------------------------------------------------------ locking

    @contextlib.contextmanager
    def locked(self, run_id: str):
        """Hold the folder's lock (so no second process trains the run) for the ``with`` block.

        Raises:
            CheckpointError: another live process holds it (a killed one releases it).
        """
        self.acquire(run_id)
        try:
            yield self
        finally:
            self.release()

    def acquire(self, run_id: str) -> None:
        """Take the lock without waiting; see :meth:`locked`."""
        if self._lock_fd is not None:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise CheckpointError(
                f"Cannot create the checkpoint folder {self.path} of run {run_id}: {err.strerror or err}. "
                "Pass a writable --checkpoint-dir."
            ) from err
        if fcntl is None:  # not POSIX: no lock, as before
            self._lock_fd = fd
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise CheckpointError(
                f"Run {run_id} is being trained by another process right now (pid {holder}; it holds "
                f"{self.path / 'lock'}). Wait for it, or stop it first."
            ) from err
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def release(self) -> None:
        """Let go of the lock (closing the file releases it)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def is_locked(self) -> bool:
        """Whether another process holds the lock now."""
        if self._lock_fd is not None or not (self.path / "lock").exists():
            return False
        if fcntl is None:
            return False
        fd = os.open(self.path / "lock", os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)
        return False

    # ------------------------------------------------------------------ helpers

    def _readable(self, sidecar_path: Path) -> bool:
        try:
            self.load(int(_NAME.fullmatch(sidecar_path.name).group(1)))
        except CheckpointError:
            return False
        return True

    def _prune(self) -> None:
        """Delete all but the newest ``keep`` checkpoints (sidecar first), and stray arrays."""
        iterations = self.iterations()
        for iteration in iterations[: -self.keep]:
            for suffix in ("json", "npz"):
                with contextlib.suppress(OSError):
                    (self.path / f"ckpt-{iteration:08d}.{suffix}").unlink()
        kept = {f"ckpt-{iteration:08d}.npz" for iteration in iterations[-self.keep :]}
        for stray in self.path.glob("ckpt-*.npz"):
            if stray.name not in kept:
                with contextlib.suppress(OSError):
                    stray.unlink()

    def _remove_temporary_files(self) -> None:
        for stray in self.path.glob(".ckpt-*.tmp"):
            with contextlib.suppress(OSError):
                stray.unlink()


def _open_for_write(path: Path):
    """Open a temporary checkpoint file for writing (tests replace this to simulate a full disk)."""
    return open(path, "wb")


def _write_atomic(path: Path, write) -> str:
    """``write(file)`` to a temporary file beside ``path``, fsync, rename onto ``path``; returns the sha256."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with _open_for_write(temporary) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        digest = hashlib.sha256(temporary.read_bytes()).hexdigest()
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    _fsync_folder(path.parent)
    return digest


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _to_numpy(variable) -> np.ndarray:
    import keras  # deferred: Keras reads its backend once, at import, after the caller selected it

    return np.array(keras.ops.convert_to_numpy(variable.value), copy=True)


def _model_extras(algorithm) -> list:
    """The model's non-trainable variables that are not already among the algorithm's own."""
    own = {id(v) for v in algorithm.meta_variables() + algorithm.state_variables()}
    return [v for v in algorithm.model.non_trainable_variables if id(v) not in own]


def _optimizer_slots(optimizer) -> list[tuple[str, object]]:
    """``(name, variable)`` of the optimizer's variables but its learning rate (set from the config).

    Names drop the optimizer's own prefix (``"adam_3/iteration"`` -> ``"iteration"``); they are
    recorded for the reader, while restoring matches variables by position and shape.
    """
    slots = []
    for variable in optimizer.variables:
        name = str(variable.path).split("/", 1)[-1]
        if name == "learning_rate":
            continue
        slots.append((name, variable))
    return slots
