"""Logins."""

import hashlib
import hmac
import time

from . import __version__

MAX_TRIES = 3


def hash_password(password, salt):
    return hashlib.sha256(salt + password.encode()).hexdigest()


def _same(a, b):
    """Compare in constant time."""
    return hmac.compare_digest(a, b)


def check_password(user, password):
    if not user.hash:
        return False  # an account without a password cannot log in
    return _same(user.hash, hash_password(password, user.salt))


def allowed_tries(limit=MAX_TRIES):
    return limit


def banner():
    return f"shop {__version__}"


class Session:
    def __init__(self, user):
        self.user = user
        self.tries = 0
        self.locked_until = 0.0

    def login(self, password):
        if time.monotonic() < self.locked_until:
            return False
        self.tries += 1
        if self.tries > MAX_TRIES:
            self.locked_until = time.monotonic() + 60
            return False
        return check_password(self.user, password)
