"""HeadWatch: the Ray head is declared lost once it has not answered for the timeout, once."""

from __future__ import annotations

import socket
import threading

from dlapp.executor.head import HeadWatch, wait_for_head


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_head_is_lost_only_after_the_timeout_of_silence_and_said_once() -> None:
    clock, answers, lost = Clock(), [True], []

    def probe(timeout: float) -> bool:
        if not answers[-1]:
            raise TimeoutError("no answer")
        return True

    watch = HeadWatch(probe, timeout_s=20.0, on_lost=lost.append, clock=clock)
    clock.now += 30
    assert not watch.check()  # it answers: however long since the last probe
    answers.append(False)
    clock.now += 19
    assert not watch.check() and lost == []  # silent, but not for long enough
    answers.append(True)
    clock.now += 1
    assert not watch.check()  # it came back: the silence starts again from here
    answers.append(False)
    clock.now += 20
    assert watch.check()
    assert lost == ["the Ray head has not answered for 20s"]
    clock.now += 60
    assert watch.check() and len(lost) == 1  # said once


def test_a_probe_that_returns_false_is_no_answer() -> None:
    clock, lost = Clock(), []
    watch = HeadWatch(lambda t: False, timeout_s=5.0, on_lost=lost.append, clock=clock)
    clock.now += 5
    assert watch.check() and lost


def test_wait_for_head_returns_once_the_address_accepts() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    port = server.getsockname()[1]
    done = threading.Event()
    t = threading.Thread(target=lambda: (wait_for_head(f"127.0.0.1:{port}"), done.set()))
    t.start()
    assert not done.wait(1.0)  # bound, not listening: refused, so it keeps waiting
    server.listen()
    assert done.wait(10.0)
    t.join()
    server.close()
