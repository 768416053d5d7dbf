"""Split the input data into a deterministic train/test set.

Reads  data/digits.csv.gz  (the app's input binding: 64 pixel values 0..16 and
a label per row) and writes  prepared/digits_train.npz  and
prepared/digits_test.npz  (arrays ``x``: uint8 [n, 8, 8], ``y``: int64 [n]).
The split is 80/20, stratified by label, with a fixed seed, so every run and
every container gets the same split.
"""

import argparse
import gzip
import os
import sys

import numpy as np

DATA_FILE = os.path.join("data", "digits.csv.gz")
OUT_DIR = "prepared"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DATA_FILE, help="input csv.gz (default: %(default)s)")
    parser.add_argument("--out", default=OUT_DIR, help="output folder (default: %(default)s)")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    if not os.path.isfile(args.data):
        print(
            f"ERROR: input data not found: {args.data} (cwd {os.getcwd()}).\n"
            "The app spec must bind the dataset folder into the workspace at data/ "
            "(app.yaml: inputs: [{url: ./dataset, path: data}]; "
            "dl_app.properties: [from_hdfs] input_path=data).",
            file=sys.stderr,
            flush=True,
        )
        return 2

    with gzip.open(args.data, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    if table.shape[1] != 65:
        print(
            f"ERROR: {args.data}: expected 65 columns (64 pixels + label), got {table.shape[1]}",
            file=sys.stderr,
            flush=True,
        )
        return 2
    x = table[:, :64].astype(np.uint8).reshape(-1, 8, 8)
    y = table[:, 64]

    rng = np.random.default_rng(args.seed)
    test_idx = []
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        rng.shuffle(idx)
        test_idx.extend(idx[: round(len(idx) * args.test_fraction)])
    is_test = np.zeros(len(y), dtype=bool)
    is_test[test_idx] = True
    train_idx = rng.permutation(np.flatnonzero(~is_test))
    test_idx = np.sort(np.flatnonzero(is_test))

    os.makedirs(args.out, exist_ok=True)
    np.savez_compressed(os.path.join(args.out, "digits_train.npz"), x=x[train_idx], y=y[train_idx])
    np.savez_compressed(os.path.join(args.out, "digits_test.npz"), x=x[test_idx], y=y[test_idx])
    print(
        f"prepared {len(y)} samples from {args.data}: "
        f"train={len(train_idx)} test={len(test_idx)} -> {args.out}/digits_{{train,test}}.npz",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
