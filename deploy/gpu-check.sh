#!/usr/bin/env bash
# Checks a GPU node with a `cuda,nccl` build of ladder in one short visit: what the node
# has (GPUs, libraries), what the agent would offer, and the built-in trainer on GPU 0
# as a world of one over NCCL, compared with the same run on the CPU.
#
#   deploy/gpu-check.sh [path/to/ladder]          (default: ./ladder, then ladder on PATH)
#
# Everything goes to stdout; the exit status is non-zero if a step failed. The trainer
# runs are tiny (seconds on a GPU), so the whole check takes about a minute.
set -u
LADDER=${1:-./ladder}
[ -x "$LADDER" ] || LADDER=$(command -v ladder || true)
if [ -z "$LADDER" ]; then
    echo "no ladder binary: give its path as the first argument" >&2
    exit 2
fi
WORK=$(mktemp -d)
status=0
step() { echo; echo "== $*"; }
fail() { echo "FAILED: $*"; status=1; }

step "node"
uname -a
nvidia-smi --query-gpu=index,uuid,name,memory.total,driver_version --format=csv || fail "nvidia-smi"

step "libraries"
# PyTorch's cu13 wheels carry the CUDA runtime, cuBLAS, cuRAND and NCCL.
if [ -z "${LD_LIBRARY_PATH:-}" ] && command -v python3 >/dev/null; then
    SP=$(python3 -c 'import site; print(site.getsitepackages()[0])' 2>/dev/null || true)
    if [ -n "$SP" ] && [ -d "$SP/nvidia" ]; then
        export LD_LIBRARY_PATH="$SP/nvidia/cu13/lib:$SP/nvidia/nccl/lib"
        echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    fi
fi
ldd "$LADDER" | grep -E 'cuda|cublas|curand|nccl|not found'
if ldd "$LADDER" | grep -q 'not found'; then fail "missing libraries (above)"; fi

step "agent dry run"
"$LADDER" agent --gpus auto --dry-run || fail "ladder agent --dry-run"

config() {  # config DEVICE STEPS
    cat <<EOF
model: {init: random, arch: {d_model: 256, layers: 4, heads: 4}}
data: {task: synthetic-arith, examples: 4000, validation_sequences: 16}
optim: {lr: 1.0e-3, warmup: 10}
steps: $2
batch_size: 8
seq_len: 128
log_every: 10
eval: [{task: synthetic-arith-mc, limit: 100}]
device: $1
EOF
}
config cuda 40 > "$WORK/gpu.yaml"
config cpu 40 > "$WORK/cpu.yaml"

step "trainer on GPU 0, world size 1 over NCCL"
SECONDS=0
if WORLD_SIZE=1 RANK=0 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=29561 \
    LADDER_COLLECTIVE=nccl CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0} \
    "$LADDER" train "$WORK/gpu.yaml" --out "$WORK/gpu" --json > "$WORK/gpu.json" 2> "$WORK/gpu.err"; then
    cat "$WORK/gpu.json"
else
    fail "trainer on GPU"
fi
echo "wall: ${SECONDS} s"
tail -n 5 "$WORK/gpu.err"

step "the same run on the CPU"
if "$LADDER" train "$WORK/cpu.yaml" --out "$WORK/cpu" --json > "$WORK/cpu.json" 2> "$WORK/cpu.err"; then
    cat "$WORK/cpu.json"
else
    fail "trainer on CPU"
    tail -n 5 "$WORK/cpu.err"
fi

step "GPU vs CPU"
if [ ! -s "$WORK/gpu.json" ] || [ ! -s "$WORK/cpu.json" ]; then
    fail "nothing to compare (a run above failed)"
else python3 - "$WORK/gpu.json" "$WORK/cpu.json" <<'EOF' || fail "GPU and CPU runs disagree"
import json, sys
gpu, cpu = (json.load(open(p))["metrics"] for p in sys.argv[1:3])
a, b = gpu["eval/loss"], cpu["eval/loss"]
print(f"eval/loss gpu {a:.6f} cpu {b:.6f} difference {abs(a - b):.2e}")
# Same seed, same data, f32 on both; kernels sum in different orders.
sys.exit(0 if abs(a - b) < 2e-2 else 1)
EOF
fi

step "trainer throughput on the GPU"
"$LADDER" bench train --device cuda --steps 20 || fail "bench train on GPU"

rm -rf "$WORK"
echo
[ $status -eq 0 ] && echo "GPU CHECK PASSED" || echo "GPU CHECK FAILED"
exit $status
