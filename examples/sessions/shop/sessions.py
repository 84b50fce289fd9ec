"""Login sessions with a failure counter that locks an account out.

Bug 1: ``record_failure`` reads and writes the counter without a lock, so failures
recorded at the same time are lost and an attacker trying in parallel gets far more
than ``MAX_FAILURES`` tries.
Bug 2: ``locked_out`` forgets to lock out a session at exactly ``MAX_FAILURES``.
"""

import time

MAX_FAILURES = 3


class Session:
    def __init__(self, user):
        self.user = user
        self.failures = 0

    def record_failure(self):
        n = self.failures
        time.sleep(0)  # any I/O here (a log write, a metric) lets another thread in
        self.failures = n + 1

    def locked_out(self):
        return self.failures > MAX_FAILURES
