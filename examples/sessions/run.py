"""The example, end to end: a process with live sessions, attacked in parallel while
it is patched, replaced by a cumulative payload, and reverted.

    python examples/sessions/run.py
"""

import sys
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from shop import sessions  # noqa: E402

import pylivepatch as lp  # noqa: E402
from pylivepatch import shadow  # noqa: E402
from pylivepatch.builder.pack import pack  # noqa: E402

ATTEMPTS, THREADS = 200, 8


def attack(session):
    """THREADS threads record ATTEMPTS failures each, at the same time."""
    session.failures = 0
    barrier = threading.Barrier(THREADS)

    def worker():
        barrier.wait()
        for _ in range(ATTEMPTS):
            session.record_failure()

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return session.failures


def main():
    engine = lp.engine()
    alice = sessions.Session("alice")  # a session that exists before any patch
    expected = ATTEMPTS * THREADS
    ok = True

    def step(title, counted, lock, locked_at_max):
        nonlocal ok
        print(
            f"{title:<34} failures counted {counted:>5}/{expected}   lock={lock}   "
            f"locked out at MAX: {locked_at_max}"
        )

    def check(cond, why):
        nonlocal ok
        if not cond:
            ok = False
            print("  WRONG:", why)

    def at_max(session):
        saved, session.failures = session.failures, sessions.MAX_FAILURES
        result = session.locked_out()
        session.failures = saved
        return result

    n = attack(alice)
    step("unpatched", n, shadow.get(alice, 0x10C) is not None, at_max(alice))
    check(
        n < expected, "the race should lose updates before the fix (try again on an idle machine)"
    )

    v1 = pack(HERE / "fix_v1.py").data
    engine.load(v1)
    n = attack(alice)
    lock = shadow.get(alice, 0x10C)
    step("sessions-v1 applied", n, lock is not None, at_max(alice))
    check(n == expected and lock is not None, "v1 counts every failure under alice's shadow lock")

    v2 = pack(HERE / "fix_v2.py").data
    engine.load(v2)  # a replace payload: one pause swaps v1 out and v2 in
    n = attack(alice)
    step("replaced by sessions-v2", n, shadow.get(alice, 0x10C) is lock, at_max(alice))
    check(
        n == expected and shadow.get(alice, 0x10C) is lock, "v2 keeps v1's locks (state taken over)"
    )
    check(at_max(alice), "v2 also fixes the lock-out")
    check(engine.status("sessions-v1").state == "CHECKED", "v1 was replaced")

    engine.revert("sessions-v2")
    n = attack(alice)
    step("sessions-v2 reverted", n, shadow.get(alice, 0x10C) is not None, at_max(alice))
    check(shadow.get(alice, 0x10C) is None, "reverting the last owner frees the shadow locks")
    check(not at_max(alice), "the original code runs again")
    for name in ("sessions-v2", "sessions-v1"):
        engine.unload(name)
    print("every step behaved as expected" if ok else "SOMETHING WENT WRONG")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
