#!/usr/bin/env bash
# Reproduces the bundled `tiny` model end to end on a 2-core CPU (about 2 hours 10 minutes; see MODEL_CARD.md).
# Needs: apt-get install -y fluidsynth timgm6mb-soundfont ; pip install -e ".[train,convert]"
# Every step is seeded (seed 0) and resumable: rerunning continues from the last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-data/music}
OUT=${OUT:-checkpoints/tiny}
mkdir -p runs "$OUT"
[ -f "$DATA/train.jsonl" ] || python -m training.data --out "$DATA" --pieces 500 --seed 0 --workers 2
[ -f "$OUT/tokenizer.npz" ] || python -m training.tokenizer --data "$DATA" --vocab 256 --seed 0 \
    --out "$OUT/tokenizer.npz" --tokenize train valid test
# phase A: VAE and LM side by side, one core each (the LM does not need the VAE). The VAE starts from whitened PCA
# (linear paths) and trains on STFT + log-magnitude + KL losses; the LM ships its best-valid weights.
python -m training.train_vae --data "$DATA" --out "$OUT" --preset tiny --steps 5500 --gan-start 5500 --batch 8 \
    --lr 5e-4 --warmup 100 --seed 0 --threads 1 --time-limit-min 40 --eval-every 500 > runs/train_vae.out 2>&1 &
python -m training.train_lm --data "$DATA" --out "$OUT" --preset tiny --steps 2600 --batch 16 --lr 1e-3 \
    --warmup 100 --seed 0 --threads 1 --time-limit-min 40 --eval-every 100 > runs/train_lm.out 2>&1
wait
# phase B: the DPD on the new VAE's latents, both cores
python -m training.train_dpd --data "$DATA" --out "$OUT" --preset tiny --steps 2000 --batch 12 --lr 4e-4 \
    --warmup 100 --seed 0 --threads 2 --time-limit-min 45 > runs/train_dpd.out 2>&1
python -m training.evaluate --checkpoint "$OUT" --data "$DATA" --split test --n 24 --threads 2 --out training/results/eval_tiny.json
# ship: fp16 checkpoint into the package, the int8 ONNX bundle (the default runtime) and the fp32 bundle's parity
python -m training.ship --checkpoint "$OUT" --out melody_edge/assets/tiny
python -m conversion.export --checkpoint tiny --format onnx --precision int8 --out melody_edge/assets/tiny-bundle
python -m conversion.export --checkpoint tiny --format onnx --precision fp32 --out runs/tiny-fp32
cp runs/tiny-fp32/parity.json melody_edge/assets/tiny-bundle/parity_fp32.json
python -m conversion.recipes runs/tiny-fp32 melody_edge/assets/tiny-bundle --readme README.md
