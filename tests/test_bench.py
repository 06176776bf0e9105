"""`metabench bench`: two timed iterations of the real MAML path on a tiny setting, on both engines."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from metabench.harness.run.bench import PEER_KEYS, BenchError, run_bench
from metabench.harness.cli.main import main

TINY = ["--ways", "2", "--shots", "1", "--queries", "2", "--meta-batch", "2", "--inner-steps", "1",
        "--iters", "2", "--image-size", "8", "--filters", "4", "--json"]
EXTRA_KEYS = ("backend", "inner_lr", "first_order", "iters", "loss", "rss_before_mib", "peak_rss_mib", "device_peak_mib")


def _check(result: dict, backend: str) -> None:
    assert set(PEER_KEYS) | set(EXTRA_KEYS) <= set(result)
    assert result["backend"] == backend and result["impl"].startswith(f"metabench-maml-{backend}-")
    assert (result["ways"], result["shots"], result["queries"], result["meta_batch"], result["inner_steps"]) == (2, 1, 2, 2, 1)
    for key in ("first_iter_s", "ms_per_meta_iter", "meta_iters_per_s", "peak_rss_mib", "loss"):
        assert result[key] > 0, key
    assert result["peak_rss_mib"] >= result["rss_before_mib"] > 0
    assert result["device_peak_mib"] is None  # CPU: neither backend reports device memory
    assert result["ms_per_meta_iter"] == pytest.approx(1000 / result["meta_iters_per_s"], rel=0.01)


def test_bench_json_on_tensorflow(capsys):
    assert main(["bench", "--backend", "tensorflow", *TINY]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    _check(result, "tensorflow")
    assert set(result["parallelism"]) == {"intra_op", "inter_op", "tasks_in_flight"}  # pools of 0: TensorFlow's own
    assert all(isinstance(size, int) and size >= 0 for size in result["parallelism"].values())
    assert result["parallelism"]["tasks_in_flight"] >= result["engine_options"]["parallel_tasks"]


@pytest.mark.slow  # 15 s (pytest -m slow)
def test_bench_json_on_jax():
    pytest.importorskip("jax")
    code = "import sys; from metabench.harness.cli.main import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_backend_optimization_level=0"}
    done = subprocess.run([sys.executable, "-c", code, "bench", "--backend", "jax", *TINY,
                           "--conv", "matmul"], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    _check(result, "jax")
    assert result["parallelism"] is None  # the JAX engine leaves XLA's threads alone
    assert result["conv"] == "matmul" and result["impl"] == "metabench-maml-jax-vectorized-matmul-conv"


def test_bench_runs_the_tensorflow_vectorized_task_map_and_first_order():
    result = run_bench("tensorflow", ways=2, shots=1, queries=1, meta_batch=2, iters=1, image_size=8, filters=2,
                       first_order=True, engine_options={"task_map": "vectorized"})
    assert result["impl"] == "metabench-maml-tensorflow-vectorized" and result["first_order"] is True


def test_bench_runs_conv4_in_mixed_bfloat16():
    result = run_bench("tensorflow", ways=2, shots=1, queries=1, meta_batch=2, iters=1, image_size=8, filters=2,
                       dtype_policy="mixed_bfloat16")
    assert result["impl"] == "metabench-maml-tensorflow-loop-bf16" and result["dtype_policy"] == "mixed_bfloat16"
    assert np.isfinite(result["loss"])
    with pytest.raises(BenchError, match=r"Received dtype_policy='float16'; expected 'float32' or 'mixed_bfloat16'"):
        run_bench("tensorflow", dtype_policy="float16")


def test_bench_refuses_a_bad_setting_by_name(capsys):
    with pytest.raises(BenchError, match=r"Received meta_batch=0; expected an integer >= 1"):
        run_bench("tensorflow", meta_batch=0)
    assert main(["bench", "--ways", "1", "--json"]) == 2
    assert "metabench: error: Received ways=1; expected an integer >= 2." in capsys.readouterr().err
    assert main(["bench", "--backend", "tensorflow", "--grad-of-mean"]) == 2
    assert "Received --grad-of-mean with backend='tensorflow'" in capsys.readouterr().err


@pytest.mark.slow  # 15 s (pytest -m slow)
def test_bench_times_a_real_omniglot_run_and_the_share_spent_on_data(tmp_path):
    from test_omniglot import make_omniglot  # synthetic archives in the official layout

    make_omniglot(tmp_path / "data", background={"Alpha": 3, "Beta": 3}, evaluation={"Gamma": 3})
    setting = dict(ways=2, shots=1, queries=2, meta_batch=2, iters=3, image_size=8, filters=2,
                   data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), split_scheme="official")
    ahead = run_bench("tensorflow", **setting)
    assert ahead["impl"] == "metabench-maml-tensorflow-loop-omniglot" and ahead["host_data"] is True
    assert ahead["prefetch"] is True
    assert ahead["data_ms_per_meta_iter"] > 0 and ahead["step_ms_per_meta_iter"] > 0
    assert 0 <= ahead["data_wait_fraction"] < 1
    assert ahead["ms_per_meta_iter"] == pytest.approx(ahead["data_wait_ms_per_meta_iter"] + ahead["step_ms_per_meta_iter"], abs=0.02)

    in_line = run_bench("tensorflow", prefetch=False, **setting)
    assert in_line["prefetch"] is False and 0 < in_line["data_wait_fraction"] < 1
    # made in line, every millisecond of making a batch is a millisecond waited
    assert in_line["data_wait_ms_per_meta_iter"] == in_line["data_ms_per_meta_iter"] > 0
    assert in_line["loss"] == ahead["loss"]  # same batches either way
