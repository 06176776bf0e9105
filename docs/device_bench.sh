#!/usr/bin/env bash
# GPU side by side: the PyTorch peer at its strongest (torch.compile mode="reduce-overhead", CUDA
# graphs) against `metabench bench --backend jax`, on the same GPU in the same call, for
#   A: 5-way 1-shot, 15 queries, meta-batch 32, 1 inner step, inner lr 0.4   (the issue's target: ratio >= 1.0, aim 1.5)
#   B: 20-way 1-shot, 15 queries, meta-batch 16, 5 inner steps, inner lr 0.1
# then, while time is left, a real Omniglot run's share of time spent waiting on data (when the
# archives travel in the wheels folder) and a few JAX-engine variants, and a ratio table (peer ms /
# metabench ms; above 1.0 means metabench is faster). Budget: under 5 minutes of device time.
#
# The GPU machine has Python 3.12, PyTorch and JAX 0.11.2 but no TensorFlow and no Keras, and it
# reaches no registry: Keras travels as wheels (keras, namex, optree; its other needs are there).
# The peer script lives in ../shared, which does not travel: copy it into the same folder.
#
# Prepare, here, from the repository root (once; the folder is ignored, so name it in `carry`):
#   mkdir -p .devbench && grep -qx '/.devbench/' .git/info/exclude || echo '/.devbench/' >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .devbench keras==3.15.1 namex optree pillow
#   cp ../shared/bench/torch_maml_anchor.py .devbench/
#   mkdir -p .devbench/data/omniglot && cp ../shared/data/omniglot/*.zip .devbench/data/omniglot/   # 14 MiB
# Run, with the device tool:
#   run(command="bash docs/device_bench.sh .devbench", carry=[".devbench"], timeout_s=420)
# JSON lines land in $OUT/device_bench.jsonl and stderr in $OUT/device_bench.stderr.log when $OUT
# is set (the device tool sets it and brings both back).
#
# Knobs (environment): PYTHON (python3), PEER_PYTHON ($PYTHON), BUDGET_S (220: no variant starts
# later), ITERS_A (100), ITERS_B (30), SKIP_PEER=1 (metabench only), SETTING_A / SETTING_B (bench
# flags), PEER_COMPILE (reduce-overhead; empty: the eager peer). A CPU smoke test of this script:
#   PEER_PYTHON=/tmp/torch-venv/bin/python PEER_COMPILE= ITERS_A=2 ITERS_B=2 \
#   SETTING_A="--ways 2 --queries 2 --meta-batch 2" SETTING_B="--ways 2 --queries 2 --meta-batch 2 \
#   --inner-steps 2" bash docs/device_bench.sh none
set -uo pipefail

WHEELS=${1:-.devbench}
PYTHON=${PYTHON:-python3}
PEER_PYTHON=${PEER_PYTHON:-$PYTHON}
BUDGET_S=${BUDGET_S:-220}
ITERS_A=${ITERS_A:-100}
ITERS_B=${ITERS_B:-30}
PEER=${PEER:-$WHEELS/torch_maml_anchor.py}
[ -f "$PEER" ] || PEER=../shared/bench/torch_maml_anchor.py
LOGDIR=${OUT:-$(mktemp -d)}
LOG=$LOGDIR/device_bench.jsonl
ERR=$LOGDIR/device_bench.stderr.log   # every command's stderr, for when a row says "no result"
: >"$LOG"; : >"$ERR"
REPO=$(pwd)

# Keras from the wheels into a temporary site; metabench as links to this checkout (no install step).
SITE=$(mktemp -d)
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl || exit 1
fi
mkdir -p "$SITE/metabench"
for part in harness algorithms datasets; do ln -s "$REPO/$part" "$SITE/metabench/$part"; done
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" KERAS_BACKEND=jax PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
"$PYTHON" -c 'import sys, jax, keras; print("python", sys.version.split()[0], "jax", jax.__version__, "keras", keras.__version__, jax.devices())' || exit 1
"$PEER_PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())' 2>/dev/null || SKIP_PEER=1

SETTING_A=${SETTING_A:-"--ways 5 --shots 1 --queries 15 --meta-batch 32 --inner-steps 1 --inner-lr 0.4"}
SETTING_B=${SETTING_B:-"--ways 20 --shots 1 --queries 15 --meta-batch 16 --inner-steps 5 --inner-lr 0.1"}
PEER_COMPILE=${PEER_COMPILE-reduce-overhead}
COMPILE_ARGS=${PEER_COMPILE:+--compile $PEER_COMPILE}

peer() {  # label, timeout, args...
  local label=$1 limit=$2; shift 2
  [ "${SKIP_PEER:-0}" = 1 ] && return
  echo "== $label (${SECONDS}s)"
  echo "== $label" >>"$ERR"
  timeout "$limit" "$PEER_PYTHON" "$PEER" "$@" 2>>"$ERR" | label "$label"
}

label() {  # the last JSON line on stdin, tagged with $1, to stdout and $LOG; a note when there is none
  grep '^{' | tail -1 | "$PYTHON" -c '
import json, sys
text = sys.stdin.read().strip()
if not text:
    print(f"== {sys.argv[1]}: no result (failed or timed out)")
    sys.exit()
result = json.loads(text)
result["label"] = sys.argv[1]
line = json.dumps(result)
print(line)
open(sys.argv[2], "a").write(line + "\n")
' "$1" "$LOG"
}

ours() {  # label, timeout, args...
  local label=$1 limit=$2; shift 2
  echo "== $label (${SECONDS}s)"
  echo "== $label" >>"$ERR"
  timeout "$limit" "$PYTHON" - "$@" <<'EOF' 2>>"$ERR" |
import sys
from metabench.harness.cli import main  # the `metabench` command, without an installed entry point
sys.exit(main(["bench", "--backend", "jax", "--json", *sys.argv[1:]]))
EOF
    label "$label"
}

peer A-peer 120 $SETTING_A --iters "$ITERS_A" $COMPILE_ARGS
ours A-metabench 90 $SETTING_A --iters "$ITERS_A"
peer B-peer 150 $SETTING_B --iters "$ITERS_B" $COMPILE_ARGS
ours B-metabench 90 $SETTING_B --iters "$ITERS_B"

# Variants, each only while the budget lasts (labels say what changed; the table compares with A's peer).
variant() {
  if [ "$SECONDS" -lt "$BUDGET_S" ]; then ours "$@"; else echo "== $1 skipped (budget)"; fi
}
variant A-metabench-matmul-conv 60 $SETTING_A --iters "$ITERS_A" --conv matmul   # plain batched matmuls, no grouped convs
variant B-metabench-matmul-conv 90 $SETTING_B --iters "$ITERS_B" --conv matmul
if [ -d "$WHEELS/data/omniglot" ]; then  # real episodes, made ahead on a thread as the runner makes them
  CACHE=$(mktemp -d)  # the decoded images, made by the first of the two
  variant A-metabench-omniglot-data 90 $SETTING_A --iters "$ITERS_A" --data-dir "$WHEELS/data" --cache-dir "$CACHE"
  variant A-metabench-omniglot-data-no-prefetch 60 $SETTING_A --iters "$ITERS_A" --data-dir "$WHEELS/data" --cache-dir "$CACHE" --no-prefetch
fi
variant A-metabench-highest-precision 60 $SETTING_A --iters "$ITERS_A" --precision highest
variant A-metabench-host-data 60 $SETTING_A --iters "$ITERS_A" --host-data
variant A-metabench-grad-of-mean 60 $SETTING_A --iters "$ITERS_A" --grad-of-mean
variant B-metabench-grad-of-mean 60 $SETTING_B --iters "$ITERS_B" --grad-of-mean
variant A-metabench-unrolled-chunks-8 90 $SETTING_A --iters "$ITERS_A" --task-map unrolled --parallel-tasks 8

echo "== table (${SECONDS}s)"
"$PYTHON" - "$LOG" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
peers = {r["label"][0]: r for r in rows if r["label"].endswith("-peer")}
print(f"{'label':42} {'impl':40} {'ms/iter':>9} {'first s':>8} {'dev MiB':>8} {'peer ms':>8} {'ratio':>6} {'data wait':>9}")
for r in rows:
    peer = peers.get(r["label"][0])
    is_peer = r["label"].endswith("-peer")
    ratio = "" if is_peer or not peer else f"{peer['ms_per_meta_iter'] / r['ms_per_meta_iter']:.2f}"
    print(f"{r['label']:42} {r['impl']:40} {r['ms_per_meta_iter']:9.2f} {r['first_iter_s']:8.1f} "
          f"{str(r.get('device_peak_mib', '')):>8} {'' if is_peer or not peer else peer['ms_per_meta_iter']:>8} {ratio:>6} "
          f"{str(r.get('data_wait_fraction', '')):>9}")
EOF
echo "done in ${SECONDS}s; JSON lines in $LOG, stderr in $ERR"
