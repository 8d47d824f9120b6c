#!/usr/bin/env bash
# The training campaign to convergence: `paper`-size priors on the open corpus with the official DVAE
# configuration (Adam 1e-3, beta 0.01, KL warm-up 50 epochs, batch 128 x 50 frames), early stopping after
# 30 epochs without a better validation loss. An epoch of the open corpus is about 90 steps, a tenth of a WSJ0
# epoch, so the epoch budget is raised to 3000 and early stopping ends the runs.
# The priors read log-compressed power (model.log_input=true, "-log" runs): fed raw power as in the official
# code, the first tanh layer starts saturated and training crawls (docs/training_diagnosis.md). `vae` is the
# pilot with the official configuration unchanged.
# Usage: recipes/train_campaign.sh [RUNS_DIR=runs/paper] [DATA_ROOT=data/open]
# Three lanes, one thread each. Runs resume where they stopped (kill the script at any time); a finished
# run only re-exports its model. Each run's best model so far
# is in RUNS_DIR/NAME/model as soon as it improves; recipes/publish_campaign.sh copies models and logs to
# checkpoints/open-paper.
set -euo pipefail
runs=${1:-runs/paper}
data=${2:-data/open}
export OMP_NUM_THREADS=1

train() {  # train RUN PRESET [extra args...]: the paper preset PRESET into $runs/RUN
    local name=$1 preset=$2; shift 2
    local resume=()
    [ -f "$runs/$name/state.pt" ] && resume=(--resume)
    speechdvae train --preset "$preset" --size paper --data-root "$data" -o "$runs/$name" --no-progress \
        --set train.epochs=3000 "${resume[@]}" "$@" >> "$runs/$name.log" 2>&1
    echo "$name: $(tail -n 1 "$runs/$name.log")"
}

mkdir -p "$runs"
log=(--set model.log_input=true)
( train vae vae && train rvae-log rvae "${log[@]}" ) &
( train dkf-log dkf "${log[@]}" ) &
( train vae-log vae "${log[@]}" ) &
wait
