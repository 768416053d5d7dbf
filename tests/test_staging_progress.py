"""The staging meter: which progress lines the app's events get, and when (a pure clock)."""

from __future__ import annotations

from dlapp.data.progress import TransferMeter, size

GIB = 1024**3


def meter(total: int, files: int = 10) -> tuple[TransferMeter, list[float]]:
    now = [0.0]
    return TransferMeter("in", files=files, total=total, clock=lambda: now[0]), now


def test_sizes_read_as_binary_units() -> None:
    assert [size(n) for n in (0, 1023, 1536, 5 * 1024**2, 3.4 * GIB, 2 * 1024**4)] == [
        "0 B",
        "1023 B",
        "1.5 KiB",
        "5.0 MiB",
        "3.4 GiB",
        "2.0 TiB",
    ]


def test_a_line_after_each_tenth_of_the_bytes_with_files_and_throughput() -> None:
    m, now = meter(10 * GIB, files=340)
    assert m.begin() == "staging in: 340 files, 10.0 GiB"
    lines = []
    for _ in range(20):
        now[0] += 2.0
        lines.append(m.add(GIB // 2, files=17))
    due = [line for line in lines if line]
    assert len(due) == 10
    assert due[0] == "staging in: 34/340 files, 1.0/10.0 GiB, 256.0 MiB/s"
    assert due[-1] == "staging in: 340/340 files, 10.0/10.0 GiB, 256.0 MiB/s"


def test_a_slow_staging_still_reports_every_few_seconds_and_never_floods() -> None:
    m, now = meter(100 * GIB)
    lines = []
    for _ in range(610):  # 61 s, 1 MiB each tenth of a second: far from a tenth of the total
        now[0] += 0.1
        lines.append(m.add(1024**2))
    assert sum(1 for line in lines if line) == 4  # every 15 s
    m2, now2 = meter(10 * 1024**2)
    flood = []
    for _ in range(100):  # a tenth of the bytes every 10 ms: at most one line a second
        now2[0] += 0.01
        flood.append(m2.add(1024**2))
    assert sum(1 for line in flood if line) == 1


def test_a_failed_try_takes_its_bytes_back_and_the_summary_counts_retries() -> None:
    m, now = meter(3 * 1024**2, files=1)
    m.add(2 * 1024**2)
    m.take_back(2 * 1024**2)
    m.retries += 1
    m.add(3 * 1024**2, files=1)
    now[0] = 2.0
    assert m.summary("cache: 0 hits") == (
        "staging in done: 1 files, 3.0 MiB in 2.0s, 1.5 MiB/s; 1 retry; cache: 0 hits"
    )
