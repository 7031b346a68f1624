#!/usr/bin/env bash
# The goal check of docs/notes/results-history.md ("Output calibration") for one trained QCFS ANN run: ttrbr
# (the default, output calibration included) tuned at T = 4 (cells t <= 4) and at T = 8 (cells
# t = 5..8), robust-norm, all scored paired against untuned qcfs, robust and the ANN on every
# image of the test file.
#
#   bash benchmarks/conversion_check_ann.sh ANN_RUN QCFS_RUN OUT
#
# ANN_RUN: a QCFS ANN run folder (e.g. runs/seed1/anns/resnet110-pre-add-qcfs); QCFS_RUN: its
# untuned qcfs conversion (the experiment's conversions/<ann>-qcfs); OUT: a new folder.
# About 50 minutes for a resnet110 of the cpu profile, one thread (conversions 15, compares 35).
# Extra ttrbr options (e.g. --tune-reference ann) go in TTRBR_OPTS. Steps already done in OUT
# are kept.
set -euo pipefail
ANN=$1
Q=$2
E=$3
SB=${SB:-.venv/bin/spikebridge}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$E"
convert() { # folder, then convert's options
  local dir=$1
  shift
  [ -f "$dir/summary.json" ] || $SB convert --ann "$ANN" --calibration-size 1024 \
    --test-images 500 --out "$dir" "$@"
}
# shellcheck disable=SC2086  # TTRBR_OPTS is a list of options
convert "$E/ttrbr-t4" --method ttrbr --timesteps 1,2,3,4 --tune-timesteps 4 ${TTRBR_OPTS:-}
# shellcheck disable=SC2086
convert "$E/ttrbr-t8" --method ttrbr --timesteps 8 --tune-timesteps 8 ${TTRBR_OPTS:-}
convert "$E/robust" --method robust --timesteps 8

cmp() { # json name, baseline, candidate, timesteps
  [ -f "$E/$1.json" ] || $SB compare "$2" "$3" --timesteps "$4" --whole-test-set --json "$E/$1.json"
}
cmp qcfs-vs-t4 "$Q" "$E/ttrbr-t4" 1,2,3,4
cmp qcfs-vs-t8 "$Q" "$E/ttrbr-t8" 5,6,7,8
cmp robust-vs-t4 "$E/robust" "$E/ttrbr-t4" 1,2,3,4
cmp robust-vs-t8 "$E/robust" "$E/ttrbr-t8" 5,6,7,8
cmp ann-vs-t4 "$ANN" "$E/ttrbr-t4" 4
cmp ann-vs-t8 "$ANN" "$E/ttrbr-t8" 8
