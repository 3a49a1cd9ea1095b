#!/usr/bin/env bash
# The attacks x defenses sweeps of docs/results/robustness.md (mnist5k, then digits).
# Usage: bash docs/results/robustness/run-attacks.sh OUT_DIR   (seeds 0, 1, 2: 2 × 240 runs)
# The last attack is min-sum with the largest benign score as bound (minsum_bound: max), for comparison with the
# official smallest (min, the default).
set -euo pipefail
OUT=${1:-/tmp/robustness}
HERE=$(dirname "$0")
METHODS='method={name: fedavg};{name: median, num_malicious: 4};{name: trimmed_mean, num_malicious: 4};{name: krum, num_malicious: 4};{name: multikrum, num_malicious: 4};{name: bulyan, num_malicious: 4};{name: normclip};{name: fltrust}'
ATTACKS='attack={kind: null};{kind: label_flip, fraction: 0.2};{kind: backdoor, fraction: 0.2, target: 0, trigger: {size: 4}};{kind: sign_flip, fraction: 0.2, scale: 4};{kind: gaussian, fraction: 0.2};{kind: scaling, fraction: 0.2};{kind: alie, fraction: 0.2, sees_benign: true};{kind: minmax, fraction: 0.2, sees_benign: true};{kind: minsum, fraction: 0.2, sees_benign: true};{kind: minsum, fraction: 0.2, sees_benign: true, minsum_bound: max}'
.venv/bin/fedweave sweep "$HERE/attacks-base.yaml" --grid "$METHODS" --grid "$ATTACKS" --seeds 0,1,2 --jobs 2 -q --out "$OUT/mnist5k"
# digits (8x8): a quick check with the same grid; the trigger is 2x2
ATTACKS_DIGITS=${ATTACKS//size: 4/size: 2}
.venv/bin/fedweave sweep "$HERE/attacks-base.yaml" --set data.dataset=digits --grid "$METHODS" --grid "$ATTACKS_DIGITS" \
    --seeds 0,1,2 --jobs 2 -q --out "$OUT/digits"
