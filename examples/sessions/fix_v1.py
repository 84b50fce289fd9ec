"""Fix bug 1: count failures under a lock.

Sessions already exist and their class must not change, so each live session gets
its lock as a *shadow variable*; the payload declares system state 1 ("session locks
live in shadow LOCK") so that a later cumulative payload can take the locks over.
"""

import threading
import time

import pylivepatch as lp
from pylivepatch import shadow

patch = lp.Patch("sessions-v1", version="1", consistency="atomic", metadata={"ticket": "SEC-7"})
patch.state(id=1, version=1)

LOCK = 0x10C


def _new_lock(session):
    return threading.Lock()


@patch.function("shop.sessions:Session.record_failure")
def record_failure(self):
    with shadow.get_or_alloc(self, LOCK, _new_lock):
        n = self.failures
        time.sleep(0)
        self.failures = n + 1


@patch.pre_apply
def take_over(ctx):
    prev = ctx.prev_state(1)
    ctx.state(1).data = prev.data if prev else {"shadow": LOCK}
    ctx.log("locks taken over from " + prev.payload if prev else "locks start empty")


@patch.post_revert
def drop_locks(ctx):
    if ctx.rc == 0 and ctx.prev_state(1) is None:  # nobody below us uses the locks
        shadow.free_all(ctx.state(1).data["shadow"])
        ctx.log("session locks freed")
