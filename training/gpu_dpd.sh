#!/usr/bin/env bash
# The DPD teacher fine-tuned much longer, then distilled to 4 steps, on a lent GPU that has none of the audio: it
# trains from a latent pack (training.latent_pack) and writes only the two DPDs and their logs.
#
# Here (2 cores): python -m training.latent_pack pack --data data/music --checkpoint checkpoints/ctl8 --clips 5000 \
#                     --out .gpu/pack          (.gpu/ in .git/info/exclude; the pack is about 59 MB)
# There:          PYTHON=python3 PACK=.gpu/pack RESULT=$OUT bash training/gpu_dpd.sh   (carry .gpu)
#                 Measured on an H200: unpacking 5,000 clips takes 95 s; the teacher runs about 22 steps/s at batch 96
#                 (5,320 steps in TRAIN_MIN=4). The whole working tree travels: leave the bundles out of it
#                 (git rm --cached + .git/info/exclude) to stay under the 64 MiB a call carries.
# Back here:      python -m training.latent_pack merge --part RESULT/student --checkpoint checkpoints/ctl8 \
#                     --out checkpoints/gpu4, then conversion.distill combine with the shipped LM and export.
#
# Each stage has a time limit and runs its learning-rate schedule over it (--lr-by-time), so a stage cut short still
# ends at the schedule's floor; the teacher is written to RESULT before distillation starts, so a failed or cut
# distillation still brings the teacher back. Knobs (environment): PYTHON, PACK, RESULT, WORK, DEVICE, TRAIN_MIN,
# TRAIN_STEPS, BATCH, LR, DISTILL_MIN, DISTILL_STEPS, DISTILL_BATCH, DISTILL_LR, EVAL_EVERY.
set -uo pipefail
cd "$(dirname "$0")/.."
PACK=${PACK:-.gpu/pack} PY=${PYTHON:-python}
RESULT=${RESULT:?set RESULT to the folder the DPDs are written to}
WORK=${WORK:-/tmp/gpu_dpd}
DEVICE=${DEVICE:-cuda:0}  # an index: Run calls torch.cuda.set_device
TRAIN_MIN=${TRAIN_MIN:-5} TRAIN_STEPS=${TRAIN_STEPS:-20000} BATCH=${BATCH:-96} LR=${LR:-5e-4}
DISTILL_MIN=${DISTILL_MIN:-2.5} DISTILL_STEPS=${DISTILL_STEPS:-6000} DISTILL_BATCH=${DISTILL_BATCH:-64}
DISTILL_LR=${DISTILL_LR:-1e-4} EVAL_EVERY=${EVAL_EVERY:-400}
export PYTHONUNBUFFERED=1 TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1
log() { echo "[$(date -u +%H:%M:%S)] $*"; }
quiet() { "$@" 2>&1 | tr '\r' '\n' | grep -v -E 'step/s\]\s*$|^\s*$'; return "${PIPESTATUS[0]}"; }  # no progress bars
mkdir -p "$RESULT"
log "unpack $PACK"
"$PY" -m training.latent_pack unpack --pack "$PACK" --data "$WORK/data" --checkpoint "$WORK/teacher" || exit 1
log "teacher: $TRAIN_MIN min, batch $BATCH, lr $LR"
quiet "$PY" -m training.train_dpd --data "$WORK/data" --out "$WORK/teacher" --preset "$WORK/teacher" \
  --init "$WORK/teacher" --device "$DEVICE" --steps "$TRAIN_STEPS" --batch "$BATCH" --lr "$LR" --warmup 300 \
  --seed 0 --time-limit-min "$TRAIN_MIN" --lr-by-time --save-every 1000000 --log-every 100 || exit 1
"$PY" -m training.latent_pack extract --checkpoint "$WORK/teacher" --out "$RESULT/teacher" || exit 1
cp "$WORK/teacher/train_dpd.log" "$RESULT/teacher/" || true
log "distil 8 -> 4 steps: $DISTILL_MIN min, batch $DISTILL_BATCH"
quiet "$PY" -m conversion.distill dpd --teacher "$WORK/teacher" --out "$WORK/student" --steps 4 --data "$WORK/data" \
  --device "$DEVICE" --seed 0 --batch "$DISTILL_BATCH" --lr "$DISTILL_LR" --eval-clips 16 \
  --round-steps "$DISTILL_STEPS" --time-limit-min "$DISTILL_MIN" --lr-by-time --eval-every "$EVAL_EVERY" \
  --save-every 1000000 --log-every 100 || exit 1
"$PY" -m training.latent_pack extract --checkpoint "$WORK/student" --out "$RESULT/student" || exit 1
cp "$WORK/student/train_dpd4.log" "$RESULT/student/" || true
log "done"
