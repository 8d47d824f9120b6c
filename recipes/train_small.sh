#!/usr/bin/env bash
# Train the `small` priors on the open corpus, two at a time (one thread each): the six RNN-family
# models, then HiT-DVAE, LigHT-DVAE and the two LigHT ablations of the LigHT paper's Table 2 (their presets
# train for 2000 steps instead of 3500), and LigHT-DVAE trained 3500 steps longer (light-long, the shipped default).
# Usage: recipes/train_small.sh [RUNS_DIR=runs/small] [DATA_ROOT=data/open]
# Every run resumes where it stopped; finished runs are skipped. SRNN-SS fine-tunes SRNN-TF with
# scheduled sampling, as in the SE paper, so it waits for it.
set -euo pipefail
runs=${1:-runs/small}
data=${2:-data/open}
export OMP_NUM_THREADS=1

train() {  # train NAME [extra args...]: the preset NAME into $runs/NAME
    train_as "$1" "$@"
}

train_as() {  # train_as RUN PRESET [extra args...]: the preset PRESET into $runs/RUN
    local name=$1 preset=$2; shift 2
    [ -d "$runs/$name/model" ] && { echo "$name: done"; return; }
    local resume=()
    [ -f "$runs/$name/state.pt" ] && resume=(--resume)
    speechdvae train --preset "$preset" --size small --data-root "$data" -o "$runs/$name" --no-progress \
        "${resume[@]}" "$@" > "$runs/$name.log" 2>&1
    echo "$name: $(tail -n 1 "$runs/$name.log")"
}

mkdir -p "$runs"
( train srnn-tf && train srnn-ss --set "train.init_from=$runs/srnn-tf/model" && train rvae-causal \
    && train light && train light-inv-s ) &
( train vae && train dkf && train rvae && train hit && train light-inv-s-nr ) &
wait
# LigHT-DVAE continued from its model: a second warm-up and cosine decay over 3500 more steps.
train_as light-long light --set "train.init_from=$runs/light/model" --set train.lr=5e-4 --set train.warmup_steps=100 \
    --set train.cosine_steps=3400 --set train.max_steps=3500
