#!/usr/bin/env bash
# Copy the trained small priors (best model, configuration and training logs, not the optimiser
# state) from a runs folder into checkpoints/open-small/, the folder the reports and the shipped
# default are made from.
# Usage: recipes/publish_small.sh [RUNS_DIR=runs/small] [DEST=checkpoints/open-small]
set -euo pipefail
runs=${1:-runs/small}
dest=${2:-checkpoints/open-small}
for run in "$runs"/*/; do
    name=$(basename "$run")
    [ -d "$run/model" ] || { echo "$name: not finished, skipped"; continue; }
    mkdir -p "$dest/$name"
    rm -rf "$dest/$name/model"
    cp -r "$run/model" "$dest/$name/model"
    cp "$run/config.json" "$run/log.jsonl" "$run/log.csv" "$dest/$name/"
    echo "$name -> $dest/$name"
done
