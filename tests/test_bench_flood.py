"""bench/flood.py's pure parts: the hostile client's response heads, the figures, the table."""

from __future__ import annotations

import pytest

from conftest import load_bench

bench = load_bench("flood")


def test_a_response_head_gives_status_length_and_close() -> None:
    head = b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 120\r\nretry-after: 1\r\n\r\n"
    assert bench.status_line(head) == (429, 120, False)
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    assert bench.status_line(closing) == (200, 0, True)
    chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    assert bench.status_line(chunked) == (200, None, False)


def test_the_table_reads_each_figure_against_no_load() -> None:
    quiet = bench.Latency.of([0.004, 0.005, 0.006])
    flooded = bench.Latency.of([0.040, 0.050, 0.060])
    assert quiet.n == 3 and quiet.p50 == pytest.approx(0.005) and quiet.max == 0.006
    report = bench.Report("test machine", {"concurrency": 1000})
    report.rows.append(bench.Row("GET /api/v1/me", "no load", quiet))
    report.rows.append(bench.Row("GET /api/v1/me", "flood", flooded, quiet))
    report.hostile = {"200": 12, "429": 3400}
    report.notes["of them lost"] = 0
    text = bench.format_table(report)
    assert "| GET /api/v1/me | flood | 50.0 | 59.8 | 60.0 | 3 | 10.0x | 10.0x |" in text
    assert "alice's answers: 200: 12, 429: 3,400" in text
    assert "of them lost: 0" in text
    assert report.to_dict()["rows"][1]["p50_ratio"] == pytest.approx(10.0)
    assert report.to_dict()["rows"][0]["p50_ratio"] is None


def test_a_hostile_request_carries_the_token_in_its_header() -> None:
    req = bench.request_bytes("127.0.0.1", "/api/v1/cluster", "dlapp_x")
    assert req.startswith(b"GET /api/v1/cluster HTTP/1.1\r\n")
    assert b"Authorization: Bearer dlapp_x\r\n" in req and req.endswith(b"\r\n\r\n")
