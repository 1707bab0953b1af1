#!/usr/bin/env bash
# Fine-tunes the shipped `tiny` model's semantic LM further (the first run stopped at 1,164 of 3,000 steps with its
# valid loss still falling; MODEL_CARD.md), keeping its DPD student, VAE, tokenizer and sampling defaults, then
# exports the int8 bundle to a staging folder for the evaluation (training/results/eval_lm_finetune*.md).
# Resumable: rerunning continues from $OUT/train_lm.pt (or, with that gone, starts again from the shipped weights).
# Needs the data (python -m training.data --out data/music --pieces 1600 --seed 0 --workers 2).
#   STEPS=1800 MINUTES=60 THREADS=1 bash training/finetune_lm.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-data/music}
OUT=${OUT:-checkpoints/tiny4}
STAGE=${STAGE:-runs/stage4}
STEPS=${STEPS:-1800}
MINUTES=${MINUTES:-60}
THREADS=${THREADS:-1}
mkdir -p "$OUT" "$STAGE" runs
for f in config.json model.safetensors tokenizer.npz; do
  [ -s "$OUT/$f" ] || cp "melody_edge/assets/tiny/$f" "$OUT/$f"
done
# a fresh optimizer, a short warm-up and a cosine decay to the end of this run, from the shipped LM
python -m training.train_lm --data "$DATA" --out "$OUT" --preset tiny --init "$OUT" --steps "$STEPS" --batch 16 \
    --lr 4e-4 --warmup 50 --seed 1 --threads "$THREADS" --time-limit-min "$MINUTES" --eval-every 100
python -m training.ship --checkpoint "$OUT" --out "$STAGE/tiny"
python -m conversion.export --checkpoint "$STAGE/tiny" --format onnx --precision int8 --out "$STAGE/tiny-bundle"
