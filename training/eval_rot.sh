#!/usr/bin/env bash
# Evaluate a staged bundle (training/rot_lm.sh's runs/stage_rot/tiny-bundle) at the runtime defaults, the same command
# per seed as the shipped bundle's figures in MODEL_CARD.md (training/results/eval_key_guidance.md), two seeds at a
# time on one thread each (pool them with training.eval_seeds). Resumable: a seed whose JSON is there is skipped.
#   BUNDLE=runs/stage_rot/tiny-bundle NAME=rot SEEDS="0 1 2 3 4" bash training/eval_rot.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=${BUNDLE:-runs/stage_rot/tiny-bundle}
NAME=${NAME:-rot}
SEEDS=${SEEDS:-0 1 2 3 4}
mkdir -p runs/eval
[ -s runs/instrument_classifier.npz ] || OMP_NUM_THREADS=2 python -m training.evaluate --bundle "$BUNDLE" \
    --data data/music --split test --n 2 --prompts none --rows text_only --no-random \
    --classifier runs/instrument_classifier.npz --classifier-clips 450 --classifier-test-clips 40 --threads 2 \
    --out runs/eval/classifier_fit.json > runs/eval/classifier_fit.log 2>&1
evaluate() {  # SEED
  [ -s "runs/eval/${NAME}_s$1.json" ] || OMP_NUM_THREADS=1 python -m training.evaluate --bundle "$BUNDLE" \
    --data data/music --split test --n 40 --rows text_only --no-random --classifier runs/instrument_classifier.npz \
    --classifier-clips 450 --classifier-test-clips 40 --threads 1 --seed "$1" --out "runs/eval/${NAME}_s$1.json" \
    > "runs/eval/${NAME}_s$1.log" 2>&1
}
set -- $SEEDS
while [ $# -gt 0 ]; do
  evaluate "$1" &
  [ $# -gt 1 ] && evaluate "$2"
  wait
  shift $(( $# > 1 ? 2 : 1 ))
done
