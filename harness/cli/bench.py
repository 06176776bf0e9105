"""`metabench bench`: time MAML meta-iterations (the real code path) on random Omniglot-shaped data."""

from __future__ import annotations

import json
import os

from metabench.harness.engines import select_backend
from metabench.harness.errors import UsageError


def register(commands) -> None:
    bench = commands.add_parser(
        "bench",
        help="time MAML meta-iterations on random Omniglot-shaped data (compare with ../shared/bench/torch_maml_anchor.py)",
    )
    bench.add_argument("--backend", choices=["tensorflow", "jax"],
                       help="engine to time (default: $KERAS_BACKEND, else tensorflow)")
    bench.add_argument("--ways", type=int, default=5, help="classes per episode (default: 5)")
    bench.add_argument("--shots", type=int, default=1, help="support examples per class (default: 1)")
    bench.add_argument("--queries", type=int, default=15, help="query examples per class (default: 15)")
    bench.add_argument("--meta-batch", type=int, default=32, help="tasks per meta-iteration (default: 32)")
    bench.add_argument("--inner-steps", type=int, default=1, help="inner steps (default: 1)")
    bench.add_argument("--inner-lr", type=float, default=0.4, help="inner step size (default: 0.4)")
    bench.add_argument("--iters", type=int, default=10, help="timed meta-iterations after the compiled first one (default: 10)")
    bench.add_argument("--first-order", action="store_true", help="first-order MAML (default: second order)")
    bench.add_argument("--task-map", choices=["auto", "loop", "vectorized", "unrolled"], default="auto",
                       help="how the engine maps the tasks of a meta-batch (default: auto: the TensorFlow engine "
                            "loops, the JAX engine vectorizes; unrolled: JAX only)")
    bench.add_argument("--parallel-tasks", type=int, default=1,
                       help="TensorFlow: parallel_iterations of the task loop; JAX with --task-map loop or unrolled: tasks per chunk")
    bench.add_argument("--grad-of-mean", action="store_true",
                       help="JAX, vectorized: differentiate the task-mean loss once instead of averaging per-task gradients")
    bench.add_argument("--intra-op-threads", type=int, default=None,
                       help="TensorFlow: intra-op thread pool size (0: TensorFlow's own, one per core; default: "
                            "chosen from the core count, 1 on a machine with at most 2 cores)")
    bench.add_argument("--inter-op-threads", type=int, default=None,
                       help="TensorFlow: inter-op thread pool size (0: TensorFlow's own; default: chosen from the "
                            "core count, 2 on a machine with at most 2 cores)")
    bench.add_argument("--xla", action="store_true", help="TensorFlow: compile with XLA (JAX always does)")
    bench.add_argument("--host-data", action="store_true",
                       help="hand the trainer NumPy arrays every iteration (host-to-device copy included), as the runner does")
    bench.add_argument("--precision", choices=["default", "highest"], default="default",
                       help="matmul/convolution precision: each backend's default (TF32 may be used on GPUs) or full float32")
    bench.add_argument("--data-dir",
                       help="time a real Omniglot run: fresh episodes from DATA_DIR/omniglot every iteration, and the "
                            "share of time spent producing them (default: random data, the peer's)")
    bench.add_argument("--no-prefetch", action="store_true",
                       help="with --data-dir: make each batch in line before its step instead of ahead on a thread "
                            "(shows the time prefetching hides)")
    bench.add_argument("--cache-dir", help="folder for Omniglot's decoded-image cache (default: $METABENCH_CACHE or the user cache dir)")
    bench.add_argument("--image-size", type=int, default=28, help="input side in pixels, 1 channel (default: 28)")
    bench.add_argument("--filters", type=int, default=64, help="conv4 filters (default: 64)")
    bench.add_argument("--conv", choices=["native", "matmul"], default="native",
                       help="conv4's convolutions: native, or patches times a matrix (model option conv = \"matmul\"; "
                            "faster under the JAX engine's vmap over tasks)")
    bench.add_argument("--dtype-policy", choices=["float32", "mixed_bfloat16"], default="float32",
                       help="conv4's dtype policy: float32, or bfloat16 compute with float32 weights, logits and "
                            "gradients (model option dtype_policy)")
    bench.add_argument("--json", action="store_true", help="print one JSON line (the peer's keys and more)")
    bench.set_defaults(handler=_bench)


def _bench(args) -> int:
    # Before anything imports Keras: its backend is fixed at its first import.
    backend = args.backend or os.environ.get("KERAS_BACKEND") or "tensorflow"
    select_backend(backend)
    # Deferred: `metabench --help` and `list` load no pandas, matplotlib or Keras (see metabench.harness.cli).
    from metabench.harness.run.bench import format_table, run_bench

    options = {"task_map": args.task_map, "parallel_tasks": args.parallel_tasks}
    if args.xla:
        options["xla"] = True
    only = {"grad_of_mean": ("jax", args.grad_of_mean), "intra_op_threads": ("tensorflow", args.intra_op_threads),
            "inter_op_threads": ("tensorflow", args.inter_op_threads)}
    for option, (engine, value) in only.items():
        if value is None or value is False:
            continue
        if backend != engine:
            flag = "--" + option.replace("_", "-")
            raise UsageError(f"Received {flag} with backend={backend!r}; it is an option of the {engine} engine.")
        options[option] = value
    result = run_bench(
        backend,
        ways=args.ways, shots=args.shots, queries=args.queries, meta_batch=args.meta_batch,
        inner_steps=args.inner_steps, inner_lr=args.inner_lr, iters=args.iters, first_order=args.first_order,
        image_size=args.image_size, filters=args.filters, conv=args.conv, dtype_policy=args.dtype_policy, host_data=args.host_data,
        matmul_precision=args.precision, engine_options=options,
        data_dir=args.data_dir, cache_dir=args.cache_dir, prefetch=not args.no_prefetch,
    )
    print(json.dumps(result) if args.json else format_table(result))
    return 0
