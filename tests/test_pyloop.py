"""The Python engine's event loop (pyecho/_pyloop.py) on its own: timers,
watchers, the safety rule and the wake-up. (The C loop has its own unit
tests; the servers on both loops are tested together everywhere else.)"""

from __future__ import annotations

import random
import select
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from pyecho._pyloop import READ, WRITE, Loop, Timer


@pytest.fixture
def loop() -> Iterator[Loop]:
    lp = Loop()
    yield lp
    lp.close()


@pytest.fixture
def pairs() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    made: list[tuple[socket.socket, socket.socket]] = []
    yield made
    for a, b in made:
        a.close()
        b.close()


def pair(pairs: list) -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    pairs.append((a, b))
    return a, b


def run_until(loop: Loop, done, limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while not done():
        assert time.monotonic() < deadline, "the loop did not get there in time"
        loop.run_once(100)


def test_timers_fire_in_order_and_never_early(loop: Loop) -> None:
    fired: list[tuple[str, int, int]] = []
    start = loop.update_now()

    def timer(name: str, after: int) -> Timer:
        t = Timer(lambda: fired.append((name, loop.now, time.monotonic_ns() // 1_000_000)))
        loop.timer_start(t, start + after)
        return t

    # Equal deadlines fire in the order they were started.
    for name, after in [("c", 60), ("a", 20), ("b", 40), ("a2", 20), ("zero", 0)]:
        timer(name, after)
    run_until(loop, lambda: len(fired) == 5)
    assert [name for name, _, _ in fired] == ["zero", "a", "a2", "b", "c"]
    for name, now, clock in fired:
        when = start + {"zero": 0, "a": 20, "a2": 20, "b": 40, "c": 60}[name]
        assert now >= when and clock >= when, name


def test_a_timer_does_not_fire_early_when_the_loop_turns_often(loop: Loop) -> None:
    fired: list[int] = []
    for _ in range(20):
        when = loop.update_now() + 1
        t = Timer(lambda: fired.append(loop.now))
        loop.timer_start(t, when)
        deadline = time.monotonic() + 5
        while t.pending and time.monotonic() < deadline:
            loop.run_once(0)  # turns as fast as it can
        assert fired and fired.pop() >= when


def test_a_due_timer_lets_the_loop_sleep_no_longer(loop: Loop) -> None:
    fired = []
    t = Timer(lambda: fired.append(time.monotonic()))
    began = time.monotonic()
    loop.timer_start(t, loop.update_now() + 50)
    for _ in range(3):  # each turn returns for the timer, not after 10 s
        loop.run_once(10_000)
        if fired:
            break
    assert fired and 0.045 <= fired[0] - began < 2


def test_stop_and_restart(loop: Loop) -> None:
    fired: list[str] = []
    now = loop.update_now()
    stopped = Timer(lambda: fired.append("stopped"))
    moved = Timer(lambda: fired.append("moved"))
    early = Timer(lambda: fired.append("early"))
    loop.timer_start(stopped, now + 10)
    loop.timer_stop(stopped)
    loop.timer_stop(stopped)  # twice is harmless
    loop.timer_start(moved, now + 10)
    loop.timer_start(moved, now + 60)  # re-armed later: fires once, then
    loop.timer_start(early, now + 100)
    loop.timer_start(early, now + 30)  # re-armed earlier
    assert moved.pending and moved.when == now + 60 and not stopped.pending
    run_until(loop, lambda: len(fired) == 2)
    assert fired == ["early", "moved"]
    assert loop.now >= now + 60 and not moved.pending
    # A fired timer can be started again.
    loop.timer_start(stopped, loop.now + 5)
    run_until(loop, lambda: len(fired) == 3)
    assert fired == ["early", "moved", "stopped"]
    loop.run_once(30)
    assert len(fired) == 3


def test_a_timer_callback_may_stop_or_start_any_timer(loop: Loop) -> None:
    fired: list[str] = []
    now = loop.update_now()
    second = Timer(lambda: fired.append("second"))

    def first_fn() -> None:
        fired.append("first")
        loop.timer_stop(second)  # due in this very turn: it must not run
        loop.timer_start(again, loop.now)  # due now: runs in a later turn

    first = Timer(first_fn)
    again = Timer(lambda: fired.append("again"))
    loop.timer_start(first, now + 10)
    loop.timer_start(second, now + 10)
    run_until(loop, lambda: "first" in fired)
    assert fired == ["first"]
    loop.run_once(0)
    assert fired == ["first", "again"]


def test_ten_thousand_timers_rearmed_often(loop: Loop) -> None:
    """Per-connection deadlines: many timers, most moved again and again,
    fire once each, in deadline order; the heap stays bounded."""
    rng = random.Random(8)
    now = loop.update_now()
    fired: list[int] = []
    timers = []
    for i in range(10_000):
        t = Timer(lambda i=i: fired.append(i))
        timers.append(t)
        loop.timer_start(t, now + rng.randrange(1, 60))
    for _ in range(5):
        for t in timers:
            loop.timer_start(t, now + rng.randrange(1, 60))
        assert len(loop._heap) <= 2 * len(timers) + 65
    whens = {i: t.when for i, t in enumerate(timers)}
    for t in timers[::2]:
        loop.timer_stop(t)
    run_until(loop, lambda: len(fired) == 5_000)
    loop.run_once(0)
    assert sorted(fired) == list(range(1, 10_000, 2))
    assert [whens[i] for i in fired] == sorted(whens[i] for i in fired)


def test_io_watchers_and_masks(loop: Loop, pairs: list) -> None:
    a, b = pair(pairs)
    seen: list[int] = []
    loop.io_start(a, WRITE, seen.append)
    loop.run_once(0)
    assert seen == [WRITE]  # an empty socket is writable
    loop.io_set(a, 0)  # watch nothing for now
    seen.clear()
    b.send(b"x")
    loop.run_once(20)
    assert seen == []
    loop.io_set(a, READ)
    loop.run_once(1000)
    assert seen == [READ]
    with pytest.raises(ValueError):
        loop.io_start(a, READ, seen.append)  # one watcher per descriptor
    loop.io_stop(a)
    loop.io_stop(a)  # twice is harmless
    seen.clear()
    loop.run_once(20)
    assert seen == []


def test_a_hang_up_reports_what_is_watched(loop: Loop, pairs: list) -> None:
    a, b = pair(pairs)
    seen: list[int] = []
    loop.io_start(a, READ, seen.append)
    b.close()
    loop.run_once(1000)
    assert seen == [READ]
    assert a.recv(1) == b""


def test_stopping_another_watcher_drops_its_pending_event(loop: Loop, pairs: list) -> None:
    """Both sockets are ready in the same batch; whichever runs first stops
    the other, which then never runs, and a watcher started meanwhile on the
    same descriptor number does not get the old event."""
    (a, a_peer), (b, b_peer) = pair(pairs), pair(pairs)
    calls: list[str] = []
    reused: list[int] = []

    def on(name: str, other: socket.socket):
        def fn(ready: int) -> None:
            calls.append(name)
            fd = other.fileno()
            loop.io_stop(other)
            other.close()
            # The next socket made takes the closed one's number.
            x, y = socket.socketpair()
            pairs.append((x, y))
            assert x.fileno() == fd or y.fileno() == fd
            new = x if x.fileno() == fd else y
            loop.io_start(new, READ, reused.append)

        return fn

    loop.io_start(a, READ, on("a", b))
    loop.io_start(b, READ, on("b", a))
    a_peer.send(b"1")
    b_peer.send(b"1")
    time.sleep(0.01)
    assert loop.run_once(1000) == 2  # both were in the batch
    assert len(calls) == 1 and reused == []


def test_io_set_in_a_batch_masks_the_pending_event(loop: Loop, pairs: list) -> None:
    (a, a_peer), (b, b_peer) = pair(pairs), pair(pairs)
    seen: list[tuple[str, int]] = []

    def fn(name: str, other: socket.socket):
        def call(ready: int) -> None:
            seen.append((name, ready))
            loop.io_set(other, WRITE)  # no longer interested in its input

        return call

    loop.io_start(a, READ, fn("a", b))
    loop.io_start(b, READ, fn("b", a))
    a_peer.send(b"1")
    b_peer.send(b"1")
    time.sleep(0.01)
    loop.run_once(1000)
    assert len(seen) == 1


def test_wake_is_drained_and_the_loop_then_sleeps(loop: Loop) -> None:
    """A wake-up that came when nobody was waiting (the stale wake-up of a
    stop that raced the end of a session) returns one turn early, once:
    the turns after it sleep as long as asked."""
    for _ in range(3):
        loop.wake()
    began = time.monotonic()
    loop.run_once(5000)
    assert time.monotonic() - began < 1  # woken at once
    cpu, began = time.process_time(), time.monotonic()
    loop.run_once(200)
    loop.run_once(100)
    assert time.monotonic() - began >= 0.29  # slept: the wake socket was drained
    assert time.process_time() - cpu < 0.05


def test_wake_from_another_thread(loop: Loop) -> None:
    threading.Timer(0.05, loop.wake).start()
    began = time.monotonic()
    loop.run_once(10_000)
    assert time.monotonic() - began < 5


def test_many_wakes_never_block(loop: Loop) -> None:
    """wake() never blocks, even when the wake socket is full."""
    began = time.monotonic()
    for _ in range(200_000):
        loop.wake()
    assert time.monotonic() - began < 10
    loop.run_once(0)
    began = time.monotonic()
    loop.run_once(100)
    assert time.monotonic() - began >= 0.09


@pytest.mark.slow
def test_a_late_wake_up_does_not_make_the_next_session_spin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Defect 1 made certain for the Python server: its stop's wake-up is
    delayed until after the busy loop saw the stop flag and the session
    ended. The next session drains it in its first turn and then sleeps."""
    import pyecho

    real_wake = Loop.wake
    late: list[threading.Timer] = []

    def delayed_wake(self: Loop) -> None:
        late.append(threading.Timer(0.2, real_wake, (self,)))
        late[-1].start()

    with pyecho.EchoServer(("127.0.0.1", 0), engine="python", mode="raw").start() as server:
        with socket.create_connection(server.server_address, timeout=10) as s:
            stop = threading.Event()

            def pump() -> None:  # keeps the loop turning: it sees the flag
                try:
                    while not stop.is_set() and s.send(b"x" * 64):
                        s.recv(65536)
                except OSError:
                    pass

            pumping = threading.Thread(target=pump)
            pumping.start()
            time.sleep(0.05)
            monkeypatch.setattr(Loop, "wake", delayed_wake)
            server.shutdown()
            monkeypatch.undo()
            stop.set()
            pumping.join(timeout=10)
        late[0].join()
        wake_r = server._core._loop._wake_r
        readable, _, _ = select.select([wake_r], [], [], 0)
        assert readable, "the wake-up did not land after the session: no race made"
        server.start()
        cpu, began = time.process_time(), time.monotonic()
        time.sleep(0.3)
        share = (time.process_time() - cpu) / (time.monotonic() - began)
        server.shutdown()
    assert share < 0.1, f"the idle server used {share:.0%} of a CPU"


def test_a_timer_callback_that_raises_leaves_the_others_pending(loop: Loop) -> None:
    """A signal's exception (Ctrl+C) out of one timer callback: the timers
    due after it stay pending and run in the next turn."""
    fired: list[str] = []

    def interrupted() -> None:
        raise KeyboardInterrupt

    first, second = Timer(interrupted), Timer(lambda: fired.append("second"))
    now = loop.update_now()
    loop.timer_start(first, now + 5)
    loop.timer_start(second, now + 5)
    time.sleep(0.02)
    with pytest.raises(KeyboardInterrupt):
        loop.run_once(0)
    assert not first.pending and second.pending
    loop.run_once(0)
    assert fired == ["second"] and not second.pending
