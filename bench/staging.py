"""Benchmark: staging an input tree in, beside a plain copy with the same tool, in the same run.

    .venv/bin/python bench/staging.py [--size-mb 1024] [--runs 3] [--dir /tmp]
                                      [--sftp HOST:PORT:USER:KEYFILE]

The tree: SIZE MB, half in 4 large files and half in small files of 4-64 KiB (many of them).
Local (file://): ``staging.stage_in`` against ``shutil.copytree`` (both copy with the kernel's
``sendfile``). With ``--sftp``, the same tree on that server (the path must be the same there,
e.g. loopback): ``stage_in`` with the cache off against paramiko's ``SFTPClient.get`` of each
file over one connection. Each side runs RUNS times, alternately and each going first every
other run; reports the best and the median of each, in MB/s, and the ratio (the aim: staging
at 90% or more of the plain copy).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from dlapp.data import staging
from dlapp.data.locations import DataConfig, Profile
from dlapp.spec import DataBinding


def make_tree(root: Path, size_mb: int) -> int:
    rng = random.Random(7)
    block = rng.randbytes(1024 * 1024)
    large = size_mb * 1024 * 1024 // 2 // 4
    for i in range(4):
        with (root / f"large-{i}.bin").open("wb") as f:
            for _ in range(large // len(block)):
                f.write(block)
    small_total, n = 0, 0
    while small_total < size_mb * 1024 * 1024 // 2:
        size = rng.randint(4, 64) * 1024
        d = root / "small" / f"{n // 1000:03d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{n}.dat").write_bytes(block[:size])
        small_total += size
        n += 1
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def timed(action: Callable[[], object], reset: Callable[[], None]) -> float:
    reset()
    os.sync()
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def compare(
    name: str,
    total: int,
    ours: Callable[[], object],
    plain: Callable[[], object],
    reset: Callable[[], None],
    runs: int,
) -> None:
    ours_s: list[float] = []
    plain_s: list[float] = []
    for run in range(runs):  # alternate which goes first: the disk's state favours neither
        if run % 2:
            ours_s.append(timed(ours, reset))
            plain_s.append(timed(plain, reset))
        else:
            plain_s.append(timed(plain, reset))
            ours_s.append(timed(ours, reset))
    mbs = lambda t: total / t / 1e6  # noqa: E731
    print(
        f"{name} runs, MB/s: plain copy {[round(mbs(t)) for t in plain_s]}, "
        f"stage_in {[round(mbs(t)) for t in ours_s]}"
    )
    for label, pick in (("best", min), ("median", statistics.median)):
        p, o = pick(plain_s), pick(ours_s)
        print(
            f"{name} ({label} of {runs}): {total / 1e6:.0f} MB; plain copy {mbs(p):.0f} MB/s, "
            f"stage_in {mbs(o):.0f} MB/s, ratio {p / o:.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--transfers", type=int, default=8, help="staging_transfers (file://)")
    ap.add_argument("--sftp", help="HOST:PORT:USER:KEYFILE of an sshd that sees the same paths")
    args = ap.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="dlapp-bench-", dir=args.dir))
    try:
        src, dest = base / "src", base / "dest"
        src.mkdir()
        total = make_tree(src, args.size_mb)
        files = sum(1 for p in src.rglob("*") if p.is_file())
        print(f"tree: {files} files, {total / 1e6:.0f} MB")

        def reset() -> None:
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir()

        compare(
            f"file:// ({args.transfers} at once)",
            total,
            lambda: staging.stage_in(
                [DataBinding(url=f"file://{src}", path="d")],
                dest,
                config=DataConfig(transfers=args.transfers),
            ),
            lambda: shutil.copytree(src, dest / "d"),
            reset,
            args.runs,
        )
        if args.sftp:
            host, port, user, key = args.sftp.split(":")
            options = {"port": int(port), "username": user, "key_filename": key}
            config = DataConfig(profiles=(Profile("b", "sftp", (), options),))
            import paramiko

            def plain_sftp() -> None:
                client = paramiko.SSHClient()
                client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
                client.connect(host, **options)  # type: ignore[arg-type]
                sftp = client.open_sftp()
                for p in src.rglob("*"):
                    if p.is_file():
                        out = dest / "d" / p.relative_to(src)
                        out.parent.mkdir(parents=True, exist_ok=True)
                        sftp.get(str(p), str(out))
                client.close()

            compare(
                "sftp://",
                total,
                lambda: staging.stage_in(
                    [DataBinding(url=f"sftp://{host}{src}", path="d")], dest, config=config
                ),
                plain_sftp,
                reset,
                args.runs,
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
