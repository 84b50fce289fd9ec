"""Client load for the framework tests whose answers are a *pair*: the patched function
called twice in one request, with a suspension in between (``first,second pid``)."""

from __future__ import annotations

# Loaded here, before client threads: a first lookup of the idna codec racing in several
# threads can leave it cached as unknown for the whole process (LookupError).
import encodings.idna  # noqa: F401
import json
import threading
import time
import urllib.request

from test_services import cli, serving, wait_until


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


def load_and_revert_twice(
    lab,
    port: int,
    app: str,
    fix: str,
    name: str,
    processes: int,
    serving_pids: set[int] | None = None,
) -> None:
    """Under client load: load the payload ``fix`` (named ``name``) app-wide, see every
    serving process answer the new pair, revert, see the old, unload; twice. No answer
    mixes versions and no request fails. ``serving_pids``: the processes that must be
    the ones answering, where known."""
    load = None
    try:
        wait_until(lambda: serving(port), "listening")
        load = Load(port)
        wait_until(
            lambda: len({pid for _, pid in load.since(0)}) == processes,
            f"answers from {processes} processes",
        )
        workers = {pid for _, pid in load.since(0)}
        if serving_pids is not None:
            assert workers == serving_pids
        (lab.root / "fix.lpz").write_bytes(lab.pack(fix))
        for _ in range(2):
            out = cli("load", "fix.lpz", "--app", app, "--json", cwd=lab.root)
            assert out.returncode == 0, out.stdout + out.stderr
            results = json.loads(out.stdout)["processes"]
            assert all(r.startswith("applied") for r in results.values()), results
            settle(load, "v2", workers, "after load")
            out = cli("revert", name, "--app", app, cwd=lab.root)
            assert out.returncode == 0, out.stdout + out.stderr
            settle(load, "v1", workers, "after revert")
            assert cli("unload", name, "--app", app, cwd=lab.root).returncode == 0
        load.close()
        mixed = [pair for _, pair, _ in load.answers if pair[0] != pair[1]]
        assert mixed == [], f"{len(mixed)} of {len(load.answers)} answers mixed versions"
        assert load.failures == [], load.failures[:3]
    finally:
        if load is not None:
            load.close()
