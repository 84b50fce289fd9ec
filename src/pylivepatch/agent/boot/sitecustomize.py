"""Started by ``pylivepatch run``: give this Python process an agent.

Never breaks the program it is loaded into: any failure is reported on stderr once.
"""

try:
    import pylivepatch

    pylivepatch.start()
except Exception as exc:  # noqa: BLE001 - the host program must run regardless
    import sys

    print(f"pylivepatch: the agent did not start: {type(exc).__name__}: {exc}", file=sys.stderr)
