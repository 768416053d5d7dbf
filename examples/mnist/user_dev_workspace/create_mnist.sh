#!/usr/bin/env bash
# Split the input data (data/digits.csv.gz) into prepared/digits_{train,test}.npz.
set -euo pipefail
cd "$(dirname "$0")"
exec python3 prepare_data.py "$@"
