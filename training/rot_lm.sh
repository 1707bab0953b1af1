#!/usr/bin/env bash
# The rotating-token semantic LM (issue 9): trained from a seeded init on the transposition-equivariant tokens, first
# on data/music, then on the whole music21 corpus, beside the shipped DPD, VAE and tokenizer (MODEL_CARD.md). On a
# 2-core CPU:
#   1. data/music (`training.data --pieces 1600 --seed 0`, the evaluation's test split) rendered if absent;
#   2. a fresh seeded LM with key_rotation on (`training.key_ablation prepare --rotation`) trained P1_MINUTES on
#      data/music on one thread, while the rest of the corpus (every usable piece data/music does not hold, its own
#      splits, so data/music's test clips and the evaluation stay as they were) renders on the other core;
#   3. data/music and the rest merged into data/full, then MINUTES on data/full on THREADS threads;
#   4. ship into STAGE and export the int8 bundle there, for training.evaluate against the shipped bundle.
# Resumable: every step is skipped when its output is there, and training continues from its train_lm.pt.
#   P1_MINUTES=40 MINUTES=35 THREADS=2 bash training/rot_lm.sh   (the shipped LM's run)
set -euo pipefail
cd "$(dirname "$0")/.."
P1_MINUTES=${P1_MINUTES:-40}
MINUTES=${MINUTES:-35}
THREADS=${THREADS:-2}
STAGE=${STAGE:-runs/stage_rot}
P0=checkpoints/rot_init
P1=checkpoints/rot_long
P2=checkpoints/rot_full
mkdir -p runs "$P1" "$P2" "$STAGE"
[ -f data/music/train.jsonl ] || python -m training.data --out data/music --pieces 1600 --seed 0 --workers 2 \
    > runs/data_music.log 2>&1
[ -s "$P0/model.safetensors" ] || python -m training.key_ablation prepare --out "$P0" --rotation --seed 0
stage() {  # FROM TO: the LM to start from, with the shipped DPD, VAE and tokenizer beside it
  for f in config.json model.safetensors tokenizer.npz; do [ -s "$2/$f" ] || cp "$1/$f" "$2/$f"; done
}
stage "$P0" "$P1"
[ -f "$P1/shipped" ] || { OMP_NUM_THREADS=1 python -m training.train_lm --data data/music --out "$P1" --preset "$P1" \
    --init "$P0" --steps 4000 --batch 16 --lr 1e-3 --warmup 50 --seed 1 --threads 1 \
    --time-limit-min "$P1_MINUTES" --lr-by-time --eval-every 200 --eval-clips 64 > runs/rot_long.log 2>&1 \
    && touch "$P1/shipped"; } &
[ -f data/rest/train.jsonl ] || OMP_NUM_THREADS=1 python -m training.data --out data/rest --pieces all \
    --exclude data/music --seed 0 --workers 1 > runs/data_rest.log 2>&1
[ -f data/full/train.jsonl ] || python -m training.data --out data/full --merge data/music data/rest
wait
stage "$P1" "$P2"
[ -f "$P2/shipped" ] || { OMP_NUM_THREADS=$THREADS python -m training.train_lm --data data/full --out "$P2" \
    --preset "$P2" --init "$P1" --steps 6000 --batch 16 --lr 4e-4 --warmup 50 --seed 2 --threads "$THREADS" \
    --time-limit-min "$MINUTES" --lr-by-time --eval-every 200 --eval-clips 64 > runs/rot_full.log 2>&1 \
    && touch "$P2/shipped"; }
python -m training.ship --checkpoint "$P2" --out "$STAGE/tiny"
python -m conversion.export --checkpoint "$STAGE/tiny" --format onnx --precision int8 --out "$STAGE/tiny-bundle"
