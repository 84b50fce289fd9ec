"""Logins."""

import hashlib

from . import __version__

MAX_TRIES = 5


def hash_password(password, salt):
    return hashlib.sha256(salt + password.encode()).hexdigest()


def check_password(user, password):
    # BUG (CVE-2026-0001): == leaks timing; an empty stored hash lets anyone in
    if not user.hash:
        return True
    return user.hash == hash_password(password, user.salt)


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
