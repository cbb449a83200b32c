#!/usr/bin/env bash
# Everything moescale measures on a GPU, in one script of under ten minutes:
#   tests      tests/test_cuda.py: bf16 grouped_mm experts vs the loop, a compiled bf16
#              training run, a resume from the trainer's sharded (DCP) checkpoint files;
#   moe_layer  bench moe-layer in bf16 at the issue's shape against a dense SwiGLU of equal
#              active FLOPs and transformers' OLMoE block, same process (moe_layer_big: the
#              same at a GPU-sized shape);
#   profile    benchmarks/profile_moe_layer.py at the GPU-sized shape (kernel times);
#   sweep      the GPU mini-sweep (examples/sweeps/gpu_mini.toml) through `moescale sweep
#              run`, cut at SWEEP_S seconds (it resumes; smallest budgets train first;
#              RESUME=path/to/sweep.tgz of an earlier call puts its store back first);
#   probe      bench train on the sweep's 1e15 rungs (d 192 dense, d 160 MoE) at the sweep's
#              batch, alone on the GPU (PROBE_MODES: no-compile and/or compile): the
#              tokens/s that sizes a GPU sweep of tiny runs;
#   train      bench train: MFU against the bf16 GEMM peak of the same process (TRAIN_SPECS).
# Usage (repository root, on the GPU machine):
#   OUT=gpu_out [STEPS="tests moe_layer probe sweep"] bash benchmarks/gpu_session.sh
# Results: $OUT/gpu.tgz (logs, JSON; re-packed after every step) and $OUT/sweep.tgz (the
# sweep store and run records, written as soon as the sweep ends). Nothing is downloaded.
set -u
OUT=${OUT:-gpu_out}
R=${WORK:-/tmp/moescale-gpu}
mkdir -p "$R" "$OUT"
PY=${PYTHON:-python3}
STEPS=${STEPS:-tests moe_layer probe sweep}
SWEEP_S=${SWEEP_S:-240}
PROBE_MODES=${PROBE_MODES:-no-compile}
RESUME=${RESUME:-}
TRAIN_SPECS=${TRAIN_SPECS:-benchmarks/specs/gpu-dense.toml benchmarks/specs/gpu-moe.toml}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export MOESCALE_CACHE=${MOESCALE_CACHE:-/tmp/moescale-cache}
T0=$(date +%s)

want() { [[ " $STEPS " == *" $1 "* ]]; }
step() {  # step NAME SECONDS CMD...: stdout to NAME.out, stderr to NAME.err
  local name=$1 limit=$2
  shift 2
  echo "=== $name (t=$(( $(date +%s) - T0 )) s, limit $limit s): $*"
  timeout "$limit" "$@" >"$R/$name.out" 2>"$R/$name.err"
  echo "=== $name rc=$? (t=$(( $(date +%s) - T0 )) s)"
  tail -n 4 "$R/$name.err"
  pack_small  # after every step: a call cut at its time limit keeps what finished
}
pack() {  # pack NAME.tgz PATHS...: run folders keep their records, not weights/checkpoints
  local name=$1
  shift
  tar czf "$OUT/$name" --exclude='*.safetensors' --exclude='*.pt' --exclude='*.distcp' \
    --exclude='checkpoint*' -C "$R" "$@"
}
pack_small() {  # gpu.tgz: every log and JSON so far, without the sweep and its corpus run
  pack gpu.tgz --exclude='./gpu_mini.db*' --exclude='./corpus_run' .
}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  $PY -c "import sys, torch, transformers; import torch.nn.functional as F
print(sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__)
print(torch.cuda.get_device_name(), 'cc', torch.cuda.get_device_capability(),
      'F.grouped_mm', hasattr(F, 'grouped_mm'), 'torch._grouped_mm', hasattr(torch, '_grouped_mm'))"
} >"$R/env.txt" 2>&1
cat "$R/env.txt"

if want tests; then
  step tests 150 $PY -m pytest -q -p no:cacheprovider -o addopts="" tests/test_cuda.py
  tail -n 3 "$R/tests.out"
fi

BENCH=(bench moe-layer --device cuda --dtype bfloat16 --repeats 30 --no-loop --json
       --hf eager,grouped_mm)
if want moe_layer; then
  step moe_layer_default 60 $PY -m moescale "${BENCH[@]}"
fi
if want moe_layer_big; then
  step moe_layer_gpu 90 $PY -m moescale "${BENCH[@]}" --tokens 32768 --d-model 2048 \
    --d-expert 512 --experts 64 --top-k 8 --shared 1
fi

if want profile; then
  step profile 90 $PY benchmarks/profile_moe_layer.py --device cuda --dtype bfloat16 \
    --tokens 32768 --d-model 2048 --d-expert 512 --out "$R/profile.txt"
fi

if want probe; then  # the sweep's batch: 256 sequences of 256 = 65,536 tokens
  for spec in gpu-tiny-dense gpu-tiny-moe; do
    for c in $PROBE_MODES; do
      step "probe_${spec}_$c" 90 $PY -m moescale bench train --device cuda --$c \
        --seq-len 256 --micro-batch 256 --steps 30 --rounds 3 --json \
        "benchmarks/specs/$spec.toml"
    done
  done
fi

if want sweep; then
  if [[ -n $RESUME ]]; then tar xzf "$RESUME" -C "$R"; fi
  # one process builds the token cache of the sweep's corpus before eight runs need it
  step corpus 120 $PY -m moescale train examples/tiny-dense.toml --corpus site-packages \
    --tokenizer byte --compute 2e10 --seq-len 256 --device cuda --out "$R/corpus_run"
  step sweep "$SWEEP_S" $PY -m moescale sweep run examples/sweeps/gpu_mini.toml \
    --store "$R/gpu_mini.db" --workers 8
  $PY -m moescale sweep plan examples/sweeps/gpu_mini.toml --store "$R/gpu_mini.db" \
    >"$R/sweep_state.out" 2>&1
  pack sweep.tgz gpu_mini.db gpu_mini.db-wal gpu_mini.db-shm gpu_mini.db.runs sweep.out \
    sweep.err sweep_state.out corpus.out corpus.err 2>/dev/null
fi

if want train; then
  for spec in $TRAIN_SPECS; do
    step "train_$(basename "$spec" .toml)" 90 $PY -m moescale bench train --device cuda \
      --compile --seq-len 1024 --micro-batch 16 --steps 24 --rounds 4 --json "$spec"
  done
fi

echo "total $(( $(date +%s) - T0 )) s"
pack_small
ls -la "$OUT"
