"""Client load for the framework tests whose answers are a *pair*: the patched function
called twice in one request, with a suspension in between (``first,second pid``)."""

from __future__ import annotations

# Loaded here, before client threads: a first lookup of the idna codec racing in several
# threads can leave it cached as unknown for the whole process (LookupError).
import encodings.idna  # noqa: F401
import threading
import time
import urllib.request

from test_services import wait_until


class Load:
    """Client threads; each answer: (time sent, (first, second), pid)."""

    def __init__(self, port: int, threads: int = 8) -> None:
        self.port = port
        self.stop = threading.Event()
        self.answers: list[tuple[float, tuple[str, str], int]] = []
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def run(self) -> None:
        deadline = time.monotonic() + 300
        while not self.stop.is_set() and time.monotonic() < deadline:
            sent = time.monotonic()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=10) as r:
                    pair, pid = r.read().decode().split()
                    first, second = pair.split(",")
                    self.answers.append((sent, (first, second), int(pid)))
            except Exception as exc:  # noqa: BLE001 - counted, must stay empty
                self.failures.append(repr(exc))

    def since(self, mark: float) -> list[tuple[tuple[str, str], int]]:
        return [(pair, pid) for t, pair, pid in self.answers if t >= mark]

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)


def settle(load: Load, expect: str, workers: set[int], what: str) -> None:
    mark = time.monotonic()
    wait_until(
        lambda: workers <= {pid for pair, pid in load.since(mark) if pair == (expect, expect)},
        f"{what}: every worker",
    )
    assert {pair for pair, _ in load.since(mark)} == {(expect, expect)}, what
