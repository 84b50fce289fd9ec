# Objects made before the payload (h11 0.16.0, CVE-2025-43859): a connection is halfway
# through a chunked body when the payload is applied (its ChunkedReader holds 0.15.0's
# count of bytes to discard); it must go on, and a malformed chunk footer on another
# reader made before the payload must be refused, as 0.16.0 does. After a revert, a
# reader the new code used goes on under the old code. Run with LPZ=the payload.
import os

import h11
import pylivepatch

HEAD = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"


def started():
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(HEAD + b"5\r\nhello")
    assert type(conn.next_event()) is h11.Request
    assert conn.next_event().data == b"hello"  # the reader now discards the chunk's \r\n
    return conn


def rest(conn, data):
    conn.receive_data(data)
    events = []
    while True:
        try:
            e = conn.next_event()
        except h11.RemoteProtocolError as exc:
            return f"refused ({exc})"
        if e is h11.NEED_DATA or type(e) is h11.EndOfMessage:
            return events + [type(e).__name__]
        events.append(type(e).__name__)


good, bad, later = started(), started(), started()
print("old code, malformed footer:", rest(started(), b"XX0\r\n\r\n"))
e = pylivepatch.engine()
name = e.load(open(os.environ["LPZ"], "rb").read()).name
r_good = rest(good, b"\r\n0\r\n\r\n")
r_bad = rest(bad, b"XX0\r\n\r\n")
later.receive_data(b"\r")  # half the footer under the new code
assert later.next_event() is h11.NEED_DATA
e.revert(name)
r_later = rest(later, b"\n0\r\n\r\n")
ok = r_good == ["EndOfMessage"] and r_bad.startswith("refused") and r_later == ["EndOfMessage"]
print(f"good: {r_good}; malformed: {r_bad}; reverted mid-footer: {r_later}")
print(("ok" if ok else "FAILED") + ": readers made before the payload")
