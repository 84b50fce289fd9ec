"""Coverage-guided fuzzing of the payload, protocol and reply readers with atheris (libFuzzer).

    pip install atheris
    python fuzz/coverage_guided.py -max_total_time=300 [-seed=N] [CORPUS_DIR]

The readers are instrumented; each input is split by its first byte between the
payload reader, the protocol reader and the command line's reader of an agent's reply
(``Client``: frame, parse, check the shape of a verb's result). Anything but the readers' own refusals
(``LivepatchError``, ``ProtocolError``) is a crash, which libFuzzer reports with the
input that caused it. fuzz/run.py does the same by mutation only, without atheris.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

with atheris.instrument_imports():
    from pylivepatch import Client, LivepatchError
    from pylivepatch.agent import protocol
    from pylivepatch.payload import archive


def one_input(data: bytes) -> None:
    if not data:
        return
    if data[0] & 1:
        try:
            archive.read(data[1:])
        except LivepatchError:
            pass
        return
    a, b = socket.socketpair()
    try:
        a.sendall(data[1:65536])
        a.shutdown(socket.SHUT_WR)
        b.settimeout(2)
        try:
            reply = protocol.receive(b)
        except protocol.ProtocolError:
            return
        if reply is not None and data[0] & 2:  # as the command line reads a reply
            verb = VERBS[(data[0] >> 2) % len(VERBS)]
            try:
                Client(1)._answer(verb, reply)
            except LivepatchError:
                pass
    finally:
        a.close()
        b.close()


VERBS = ("ping", "list", "status", "log", "apply", "unload")


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
