#!/usr/bin/env bash
# Reproduces the bundled `tiny` model (with controls) on a 2-core CPU (about 2 h 30 min; see MODEL_CARD.md).
# Needs: apt-get install -y fluidsynth timgm6mb-soundfont ; pip install -e ".[train,convert]"
# Every step is seeded (seed 0) and resumable: rerunning continues from the last checkpoint or skips what is done.
#
# The VAE is the previous shipped model's (commit c105cc3, trained by the earlier recipe of this script: 5,019 steps
# from a whitened-PCA start); the LM and the DPD are fine-tuned from that model where shapes allow
# (training.init_from) on the new data and the transposition-equivariant tokens.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-data/music}
OUT=${OUT:-checkpoints/tiny3}
PREV=${PREV:-checkpoints/prev}
PREV_COMMIT=${PREV_COMMIT:-c105cc3}
mkdir -p runs "$OUT" "$PREV"
for f in config.json model.safetensors tokenizer.npz; do
  [ -s "$PREV/$f" ] || git show "$PREV_COMMIT:melody_edge/assets/tiny/$f" > "$PREV/$f"
done
# data: 1,600 corpus pieces x 3 renders (tonic targets spread round the circle, 50-180 BPM), split by piece
[ -f "$DATA/train.jsonl" ] || python -m training.data --out "$DATA" --pieces 1600 --seed 0 --workers 2
# semantic tokens: 64 base codes x 12 rotations (transposition-equivariant)
[ -f "$OUT/tokenizer.npz" ] || python -m training.tokenizer --data "$DATA" --vocab 768 --rotations 12 --seed 0 \
    --out "$OUT/tokenizer.npz" --tokenize train valid test
python -m training.init_from --old "$PREV" --tokenizer "$OUT/tokenizer.npz" --out "$OUT" --preset tiny
# LM (controls, beat clock, tokens in C) and DPD (token features) side by side, one core each; the DPD stops
# later so the two never write the checkpoint folder at the same moment
python -m training.train_lm --data "$DATA" --out "$OUT" --preset tiny --init "$OUT" --steps 3000 --batch 16 \
    --lr 7e-4 --warmup 100 --seed 0 --threads 1 --time-limit-min 42 --eval-every 100 > runs/train_lm.out 2>&1 &
python -m training.train_dpd --data "$DATA" --out "$OUT" --preset tiny --init "$OUT" --steps 2000 --batch 12 \
    --lr 3e-4 --warmup 50 --seed 0 --threads 1 --time-limit-min 46 > runs/train_dpd.out 2>&1
wait
# evaluation on the checkpoint, then ship: fp16 checkpoint, int8 ONNX bundle (the default runtime), fp32 parity
python -m training.evaluate --checkpoint "$OUT" --data "$DATA" --split test --n 24 --threads 2 \
    --classifier-clips 450 --classifier-test-clips 180 --out training/results/eval_tiny_checkpoint.json
python -m training.ship --checkpoint "$OUT" --out melody_edge/assets/tiny
python -m conversion.export --checkpoint tiny --format onnx --precision int8 --out melody_edge/assets/tiny-bundle
python -m training.evaluate --bundle tiny --data "$DATA" --split test --n 24 --threads 2 \
    --classifier-clips 450 --classifier-test-clips 180 --out training/results/eval_tiny_bundle.json
python -m conversion.export --checkpoint tiny --format onnx --precision fp32 --out runs/tiny-fp32
cp runs/tiny-fp32/parity.json melody_edge/assets/tiny-bundle/parity_fp32.json
python -m conversion.recipes runs/tiny-fp32 melody_edge/assets/tiny-bundle --readme README.md
