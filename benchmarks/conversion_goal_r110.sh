#!/usr/bin/env bash
# The resnet110 goal check of docs/notes/results-history.md ("resnet110 on the whole 10,000-image test file"):
# the pre-add QCFS resnet110 ANN of the cpu profile, converted with untuned qcfs, robust and ttrbr tuned
# at every deployment T (t <= 4 from the conversion tuned at 4, t = 5..8 each from its own),
# all scored paired on every image of Fashion-MNIST's 10,000-image test file.
#
#   bash benchmarks/conversion_goal_r110.sh [OUT]        (default OUT: runs/goal_r110)
#
# About 2 hours, one thread on the 2-core CPU machine (ANN 16, conversions 30, compares 75).
# Every step reuses what a previous run left in OUT. SpikingJelly's side (peer env only):
#   PYTHONPATH=. .peer-venv/bin/python benchmarks/spikingjelly_convert.py --ann OUT/anns/...
#     --swap-to-relu --timesteps 8 --calibration-size 1024 --whole-test-set
set -euo pipefail
OUT=${1:-runs/goal_r110}
SB=${SB:-.venv/bin/spikebridge}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
E=$OUT/exact
ANN=$OUT/anns/resnet110-pre-add-qcfs
Q=$OUT/conversions/resnet110-pre-add-qcfs-qcfs
mkdir -p "$E"

# 1. the ANN (6 epochs, quarter width) and its untuned qcfs conversion
$SB experiment experiments/conversion_depth.yaml --profile cpu --out "$OUT" \
  --set models=[resnet110] --set blocks=[pre-add] --set activations.relu=null \
  --set methods=[qcfs] --set timesteps=[1,2,4,8]

# 2. ttrbr tuned at T with the default reference (auto: the ANN at T <= 4 = its QCFS levels,
#    its clip twin above), the same with --tune-reference ann at T = 5..8 (the ablation), and
#    robust-norm; each scores 500 images itself, the figures that count come from the compares
convert() { # folder, then convert's options
  local dir=$1
  shift
  [ -f "$dir/summary.json" ] || $SB convert --ann "$ANN" --calibration-size 1024 \
    --test-images 500 --out "$dir" "$@"
}
convert "$E/ttrbr-t4" --method ttrbr --timesteps 1,2,3,4 --tune-timesteps 4
for T in 5 6 7 8; do
  convert "$E/ttrbr-t$T" --method ttrbr --timesteps "$T" --tune-timesteps "$T"
  convert "$E/ttrbr-ann-t$T" --method ttrbr --timesteps "$T" --tune-timesteps "$T" --tune-reference ann
done
convert "$E/robust" --method robust --timesteps 8

# 3. paired, whole test file: each baseline against every ttrbr conversion, the ANN, and the
#    two references against each other
TTRBR=("$E"/ttrbr-t{4,5,6,7,8})
ALL=1,2,3,4,5,6,7,8
$SB compare "$Q" "${TTRBR[@]}" "$E"/ttrbr-ann-t{5,6,7,8} --timesteps $ALL --whole-test-set \
  --json "$E/qcfs-vs-ttrbr.json"
$SB compare "$E/robust" "${TTRBR[@]}" "$E"/ttrbr-ann-t{5,6,7,8} --timesteps $ALL --whole-test-set \
  --json "$E/robust-vs-ttrbr.json"
$SB compare "$ANN" "$E/ttrbr-t4" --timesteps 4 --whole-test-set --json "$E/ann-vs-ttrbr-t4.json"
$SB compare "$ANN" "$E/ttrbr-t8" --timesteps 8 --whole-test-set --json "$E/ann-vs-ttrbr-t8.json"
for T in 5 6 7 8; do
  $SB compare "$E/ttrbr-ann-t$T" "$E/ttrbr-t$T" --timesteps "$T" --whole-test-set \
    --json "$E/reference-ann-vs-auto-t$T.json"
done
