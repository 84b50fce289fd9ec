"""Logins."""

import hashlib
import hmac

from . import __version__

MAX_TRIES = 5


def hash_password(password, salt):
    return hashlib.sha256(salt + password.encode()).hexdigest()


def _same(a, b):
    """Compare in constant time."""
    return hmac.compare_digest(a, b)


def check_password(user, password):
    if not user.hash:
        return False  # an account without a password cannot log in
    return _same(user.hash, hash_password(password, user.salt))


def banner():
    return f"shop {__version__}"


class Session:
    def __init__(self, user):
        self.user = user
        self.tries = 0

    def login(self, password):
        self.tries += 1
        if self.tries > MAX_TRIES:
            return False
        return check_password(self.user, password)
