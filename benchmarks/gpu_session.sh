#!/usr/bin/env bash
# Everything moescale measures on a GPU, in one script of under ten minutes:
#   1. tests/test_cuda.py: bf16 grouped_mm experts vs the fp32 loop, a compiled bf16 training
#      run, a resume from the trainer's sharded (DCP) checkpoint files;
#   2. bench moe-layer in bf16 (the shape and a GPU-sized one), against a dense
#      SwiGLU of equal active FLOPs and transformers' OLMoE block in the same process;
#   3. the GPU mini-sweep (examples/sweeps/gpu_mini.toml) through `moescale sweep run`,
#      cut at SWEEP_S seconds (it resumes; smallest budgets train first);
#   4. bench train: MFU against the bf16 GEMM peak measured in the same process, dense and MoE.
# Usage (repository root, on the GPU machine):
#   OUT=gpu_out bash benchmarks/gpu_session.sh
# Results land in $OUT/gpu.tgz (logs, JSON, the sweep store); nothing is downloaded.
set -u
OUT=${OUT:-gpu_out}
R=$OUT/r
mkdir -p "$R"
PY=${PYTHON:-python3}
SWEEP_S=${SWEEP_S:-240}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export MOESCALE_CACHE=${MOESCALE_CACHE:-/tmp/moescale-cache}
T0=$(date +%s)

step() {  # step NAME SECONDS CMD...: stdout to NAME.out, stderr to NAME.err
  local name=$1 limit=$2
  shift 2
  echo "=== $name (t=$(( $(date +%s) - T0 )) s, limit $limit s): $*"
  timeout "$limit" "$@" >"$R/$name.out" 2>"$R/$name.err"
  echo "=== $name rc=$? (t=$(( $(date +%s) - T0 )) s)"
  tail -n 4 "$R/$name.err"
}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  $PY -c "import sys, torch, transformers; import torch.nn.functional as F
print(sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__)
print(torch.cuda.get_device_name(), 'cc', torch.cuda.get_device_capability(),
      'F.grouped_mm', hasattr(F, 'grouped_mm'), 'torch._grouped_mm', hasattr(torch, '_grouped_mm'))"
  git log -1 --format='commit %H' 2>/dev/null
} >"$R/env.txt" 2>&1
cat "$R/env.txt"

step tests 150 $PY -m pytest -q -x -p no:cacheprovider -o addopts="" tests/test_cuda.py
tail -n 3 "$R/tests.out"

BENCH=(bench moe-layer --device cuda --dtype bfloat16 --repeats 30 --no-loop --json)
step moe_layer_default 60 $PY -m moescale "${BENCH[@]}" --hf eager,grouped_mm
step moe_layer_gpu 90 $PY -m moescale "${BENCH[@]}" --hf eager,grouped_mm \
  --tokens 32768 --d-model 2048 --d-expert 512 --experts 64 --top-k 8 --shared 1

step sweep "$SWEEP_S" $PY -m moescale sweep run examples/sweeps/gpu_mini.toml \
  --store "$R/gpu_mini.db" --workers 8
$PY -m moescale sweep plan examples/sweeps/gpu_mini.toml --store "$R/gpu_mini.db" \
  >"$R/sweep_state.out" 2>&1

TRAIN=(bench train --device cuda --compile --seq-len 1024 --micro-batch 16 --steps 24
       --rounds 4 --json)
step train_dense 75 $PY -m moescale "${TRAIN[@]}" benchmarks/specs/gpu-dense.toml
step train_moe 75 $PY -m moescale "${TRAIN[@]}" benchmarks/specs/gpu-moe.toml

echo "total $(( $(date +%s) - T0 )) s"
# run folders keep their records (result.json, metrics.jsonl), not weights or checkpoints
tar czf "$OUT/gpu.tgz" --exclude='*.safetensors' --exclude='*.pt' --exclude='*.distcp' \
  --exclude='checkpoint*' -C "$R" .
ls -la "$OUT"
