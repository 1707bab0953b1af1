#!/usr/bin/env bash
# Issue 9's key-design ablation (training/key_ablation.py): two LMs from scratch, 800 steps each at batch 16, side by
# side on one thread each (about 25 minutes on 2 cores), then both evaluated with the shipped DPD and VAE, LM only
# (no key drafts, no key guidance), seeds 0-2. Resumable: each step is skipped when its output is there.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-data/music}
PLAIN_DATA=${PLAIN_DATA:-data/plain}  # the same clips, its own tokens_<split>.npz (made by the plain tokenizer)
mkdir -p runs runs/eval "$PLAIN_DATA" checkpoints/abl_rot checkpoints/abl_plain
for f in train valid test train.jsonl valid.jsonl test.jsonl; do ln -sfn "$(realpath "$DATA/$f")" "$PLAIN_DATA/$f"; done
[ -s checkpoints/abl_plain/tokenizer.npz ] || OMP_NUM_THREADS=1 python -m training.tokenizer --data "$PLAIN_DATA" \
    --vocab 768 --rotations 1 --seed 0 --out checkpoints/abl_plain/tokenizer.npz --tokenize train valid test
[ -s checkpoints/abl_rot/model.safetensors ] || python -m training.key_ablation prepare --out checkpoints/abl_rot --rotation
[ -s checkpoints/abl_plain/model.safetensors ] || python -m training.key_ablation prepare --out checkpoints/abl_plain \
    --no-rotation --tokenizer checkpoints/abl_plain/tokenizer.npz
train() {  # NAME DATA
  OMP_NUM_THREADS=1 python -m training.train_lm --data "$2" --out "checkpoints/$1" --preset "checkpoints/$1" \
    --steps 800 --batch 16 --lr 1e-3 --warmup 50 --seed 0 --threads 1 --time-limit-min 50 --eval-every 200 \
    --eval-clips 64 > "runs/$1.log" 2>&1
}
train abl_rot "$DATA" & train abl_plain "$PLAIN_DATA"; wait
evaluate() {  # NAME SEED
  [ -s "runs/eval/$1_s$2.json" ] || OMP_NUM_THREADS=1 python -m training.evaluate --checkpoint "checkpoints/$1" \
    --data "$DATA" --split test --n 40 --rows text_only --no-random --classifier runs/instrument_classifier.npz \
    --classifier-clips 450 --classifier-test-clips 40 --threads 1 --seed "$2" --key-candidates 1 --key-strength 0 \
    --out "runs/eval/$1_s$2.json" > "runs/eval/$1_s$2.log" 2>&1
}
for s in 0 1 2; do evaluate abl_rot $s & evaluate abl_plain $s; wait; done
python -m training.eval_seeds --model "plain tokens, 24 key classes" runs/eval/abl_plain_s{0,1,2}.json \
    --model "transposition-equivariant tokens" runs/eval/abl_rot_s{0,1,2}.json \
    --reference "plain tokens, 24 key classes" --out training/results/eval_key_ablation.md
OMP_NUM_THREADS=2 python -m training.key_ablation token-keys --checkpoint checkpoints/abl_plain checkpoints/abl_rot \
    --seeds 0 1 2 | tee training/results/key_ablation_tokens.txt
