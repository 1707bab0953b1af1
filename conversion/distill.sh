#!/usr/bin/env bash
# The distillation recipe of issue 12, one command for a given teacher checkpoint:
#
#   bash conversion/distill.sh <teacher checkpoint> <outdir> [cache folder ...]
#
# 1. DPD students: 4 steps from the teacher's 8 (one progressive round), then 2 from the 4-step student and 1 from
#    the 2-step one; 2. an LM student of the teacher's size without classifier-free guidance; 3. the LM student with
#    the 4-step DPD student; 4. int8 ONNX bundles of the teacher and every student; 5. `training.evaluate --rows
#    text_only` of each (the teacher at 16/8/4/2 steps); 6. the quality-versus-cost table and plot.
# Cache folders hold latents_train.* / text_states_*.pt made for this teacher's VAE and captions (read only; default:
# the teacher folder; missing caches are computed into the student folders). Every training step is resumable:
# rerunning the script continues where it stopped; bundles and evaluations are redone only when their checkpoint is
# newer. Knobs (environment): DATA, THREADS, DPD4_STEPS/DPD4_MIN, DPD2_STEPS/DPD2_MIN, DPD1_STEPS/DPD1_MIN,
# LM_STEPS/LM_MIN, EVAL_N, EVAL_PROMPTS, CLASSIFIER, REPORT (the table's path).
set -euo pipefail

if [ $# -lt 2 ]; then
  echo "usage: bash conversion/distill.sh <teacher checkpoint> <outdir> [cache folder ...]" >&2
  exit 2
fi
TEACHER=$1
OUT=$2
shift 2
CACHE=()
for c in "${@:-$TEACHER}"; do CACHE+=(--cache "$c"); done
DATA=${DATA:-data/music}
THREADS=${THREADS:-1}
DPD4_STEPS=${DPD4_STEPS:-340} DPD4_MIN=${DPD4_MIN:-25}
DPD2_STEPS=${DPD2_STEPS:-150} DPD2_MIN=${DPD2_MIN:-12}
DPD1_STEPS=${DPD1_STEPS:-150} DPD1_MIN=${DPD1_MIN:-12}
LM_STEPS=${LM_STEPS:-250} LM_MIN=${LM_MIN:-22}
EVAL_N=${EVAL_N:-40}
EVAL_PROMPTS=${EVAL_PROMPTS:-75}
CLASSIFIER=${CLASSIFIER:-runs/instrument_classifier.npz}  # a cached instrument classifier (450 train clips)
CLASSIFIER_CLIPS=${CLASSIFIER_CLIPS:-450}
REPORT=${REPORT:-training/results/distill.md}
export OMP_NUM_THREADS=$THREADS MELODY_EDGE_THREADS=$THREADS
mkdir -p "$OUT/logs" "$OUT/bundles" "$OUT/eval"

log() { echo "[$(date -u +%H:%M:%S)] $*"; }
stale() { [ ! -e "$1" ] || [ "$2/model.safetensors" -nt "$1" ]; }  # output $1 missing or older than checkpoint $2
common=(--data "$DATA" "${CACHE[@]}" --threads "$THREADS" --seed 0)
dpd=(--batch 8 --lr 1e-4 --eval-clips 8)

log "DPD 8 -> 4 steps"
python -m conversion.distill dpd --teacher "$TEACHER" --out "$OUT/dpd4" --steps 4 "${common[@]}" "${dpd[@]}" \
  --round-steps "$DPD4_STEPS" --time-limit-min "$DPD4_MIN" --eval-every 60 > "$OUT/logs/dpd4.log" 2>&1
log "DPD 4 -> 2 steps"
python -m conversion.distill dpd --teacher "$OUT/dpd4" --out "$OUT/dpd2" --steps 2 "${common[@]}" "${dpd[@]}" \
  --round-steps "$DPD2_STEPS" --time-limit-min "$DPD2_MIN" --eval-every 50 > "$OUT/logs/dpd2.log" 2>&1
log "DPD 2 -> 1 step"
python -m conversion.distill dpd --teacher "$OUT/dpd2" --out "$OUT/dpd1" --steps 1 "${common[@]}" "${dpd[@]}" \
  --round-steps "$DPD1_STEPS" --time-limit-min "$DPD1_MIN" --eval-every 50 > "$OUT/logs/dpd1.log" 2>&1
log "LM without guidance"
python -m conversion.distill lm --teacher "$TEACHER" --out "$OUT/lm" "${common[@]}" --batch 16 --lr 3e-4 --eval-clips 32 \
  --steps "$LM_STEPS" --time-limit-min "$LM_MIN" --eval-every 50 > "$OUT/logs/lm.log" 2>&1
log "LM student + 4-step DPD student"
python -m conversion.distill combine --lm "$OUT/lm" --dpd "$OUT/dpd4" --out "$OUT/lm-dpd4" > "$OUT/logs/combine.log" 2>&1

declare -A CKPT=([teacher]=$TEACHER [dpd4]=$OUT/dpd4 [dpd2]=$OUT/dpd2 [dpd1]=$OUT/dpd1 [lm]=$OUT/lm
                 [lm-dpd4]=$OUT/lm-dpd4)
for name in teacher dpd4 dpd2 dpd1 lm lm-dpd4; do
  ckpt=${CKPT[$name]}
  if stale "$OUT/bundles/$name/manifest.json" "$ckpt"; then
    log "export $name (int8)"
    # the gate runs its end-to-end check at the fixed 8-step workload its thresholds were set at (a graph property;
    # at a student's own 4 or 2 steps the int8 error per step compounds differently: the 4-step student measured
    # 15.4 dB at 4 steps, 25.8 dB at 8)
    if ! python -m conversion.export --checkpoint "$ckpt" --format onnx --precision int8 \
        --out "$OUT/bundles/$name" > "$OUT/logs/export_$name.log" 2>&1; then
      # the parity gate refused the bundle (its figures: $OUT/bundles/$name.failed/parity.json); the table needs it
      # all the same, so it is exported again without the gate and its manifest says so ("not run (--no-check)")
      log "PARITY GATE FAILED for $name: $(grep -m1 'gate failed' "$OUT/logs/export_$name.log" | cut -c1-200)"
      python -m conversion.export --checkpoint "$ckpt" --format onnx --precision int8 --no-check \
        --out "$OUT/bundles/$name" >> "$OUT/logs/export_$name.log" 2>&1
    fi
  fi
done

cp -n "$CLASSIFIER" "$OUT/eval/instrument_classifier.npz" 2>/dev/null || true
evaluate() {  # name bundle steps|default
  local json=$OUT/eval/$1.json steps=()
  [ "$3" = default ] || steps=(--steps "$3")
  if stale "$json" "${CKPT[${2}]}"; then
    log "evaluate $1"
    python -m training.evaluate --bundle "$OUT/bundles/$2" --data "$DATA" --split test --n "$EVAL_N" \
      --classifier-clips "$CLASSIFIER_CLIPS" \
      --n-prompts "$EVAL_PROMPTS" "${steps[@]}" --rows text_only --no-random --classifier-test-clips 40 \
      --classifier "$OUT/eval/instrument_classifier.npz" --threads "$THREADS" --out "$json" \
      > "$OUT/logs/eval_$1.log" 2>&1
  fi
}
evaluate teacher-16 teacher 16
evaluate teacher-8 teacher 8
evaluate teacher-4 teacher 4
evaluate teacher-2 teacher 2
evaluate dpd4 dpd4 default
evaluate dpd2 dpd2 default
evaluate dpd1 dpd1 default
evaluate lm lm default
evaluate lm-dpd4 lm-dpd4 default

log "report -> $REPORT"
B=$OUT/bundles E=$OUT/eval
python -m conversion.distill report --data "$DATA" --threads "$THREADS" --out "$REPORT" \
  --row "teacher 16 steps" "$B/teacher" 16 "$E/teacher-16.json" \
  --row "teacher 8 steps (LM CFG 3)" "$B/teacher" 8 "$E/teacher-8.json" \
  --row "teacher 4 steps" "$B/teacher" 4 "$E/teacher-4.json" \
  --row "teacher 2 steps" "$B/teacher" 2 "$E/teacher-2.json" \
  --row "DPD student 4 steps" "$B/dpd4" default "$E/dpd4.json" \
  --row "DPD student 2 steps" "$B/dpd2" default "$E/dpd2.json" \
  --row "DPD student 1 step" "$B/dpd1" default "$E/dpd1.json" \
  --row "LM student (no CFG), 8 steps" "$B/lm" default "$E/lm.json" \
  --row "LM student + DPD student 4" "$B/lm-dpd4" default "$E/lm-dpd4.json" \
  --target dpd "DPD student 4 steps" "teacher 8 steps (LM CFG 3)" \
  --target lm "LM student (no CFG), 8 steps" "teacher 8 steps (LM CFG 3)" \
  > "$OUT/logs/report.log" 2>&1
log "done: $REPORT"
