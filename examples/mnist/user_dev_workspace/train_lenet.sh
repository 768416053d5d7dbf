#!/usr/bin/env bash
# Train the LeNet-style CNN; writes output/model.pt and output/metrics.json.
set -euo pipefail
cd "$(dirname "$0")"
exec python3 train.py "$@"
