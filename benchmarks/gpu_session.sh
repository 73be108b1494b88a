#!/usr/bin/env bash
# One lent-GPU session, in priority order, each step under its own time limit so a short lease still returns
# results: the compiled scan kernels against float64 (pytest -m cuda), the paper presets' training step / memory /
# inference with activation-checkpointing settings (CKPT_SETS), issue 15's end-of-run torchrun case, one stage's scan timings.
#   OUT=/tmp/gpu bash benchmarks/gpu_session.sh
set -u
OUT=${OUT:-/tmp/pamm-gpu-session}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
PY=${PY:-python3}
log() { echo "== $(date +%T) $*" | tee -a "$OUT/session.log"; }
log "start"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } >> "$OUT/session.log" 2>&1
log "pytest -m cuda"
timeout "${T_TESTS:-120}" $PY -m pytest -q -x -m cuda -p no:cacheprovider tests/test_selective_scan_gpu.py \
  > "$OUT/cuda_tests.log" 2>&1; echo "rc=$?" >> "$OUT/cuda_tests.log"; tail -3 "$OUT/cuda_tests.log" | tee -a "$OUT/session.log"
log "train_step"
timeout "${T_STEP:-180}" $PY benchmarks/train_step.py --presets nyud-vitl,pascal-vitl --modes bf16 \
  --checkpointing "${CKPT_SETS:-backbone;stages;backbone,stages}" \
  --steps 3 --warmup 1 --infer-batches 16 --out "$OUT" >> "$OUT/session.log" 2>&1; log "train_step rc=$?"
log "end_of_run"
timeout "${T_EOR:-330}" $PY benchmarks/end_of_run.py --nproc 1 --preset pascal-vitl --work /tmp/pamm-eor \
  --timeout $(( ${T_EOR:-330} - 75 )) --out "$OUT/end_of_run.json" >> "$OUT/session.log" 2>&1; log "end_of_run rc=$?"
log "scan_suite bf16"
timeout "${T_SCAN:-60}" $PY benchmarks/scan_suite.py --out "$OUT/scan_bf16" --variants triton --dtype bfloat16 \
  >> "$OUT/session.log" 2>&1; log "scan_suite rc=$?"
log "done"
