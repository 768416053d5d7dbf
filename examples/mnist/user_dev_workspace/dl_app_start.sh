#!/usr/bin/env bash
# Entry script of the mnist example app (cf. the reference's dl_app_start.sh):
# prepare the data, then train LeNet. Arguments go to train.py.
set -euo pipefail
cd "$(dirname "$0")"

bash ./create_mnist.sh
# exec so that a SIGTERM sent to this script reaches the trainer directly,
# which then saves output/checkpoint.pt and exits 143.
exec bash ./train_lenet.sh "$@"
