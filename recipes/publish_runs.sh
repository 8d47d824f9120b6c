#!/usr/bin/env bash
# Copy trained priors from a runs folder into the repository: each run's best model so far and its training
# logs; never the optimiser state, caches or the run configuration (it names this machine's paths; the model's
# own config.json carries the training settings and the manifests' names and hashes).
# Usage: recipes/publish_runs.sh RUNS_DIR DEST        e.g. recipes/publish_runs.sh runs/paper checkpoints/open-paper
set -euo pipefail
runs=$1
dest=$2
for run in "$runs"/*/; do
    name=$(basename "$run")
    [ -d "$run/model" ] || { echo "$name: no model yet, skipped"; continue; }
    mkdir -p "$dest/$name"
    rm -rf "$dest/$name/model"
    cp -r "$run/model" "$dest/$name/model"
    cp "$run/log.jsonl" "$run/log.csv" "$dest/$name/"
    echo "$name -> $dest/$name"
done
