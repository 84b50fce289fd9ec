"""Headers a redirect keeps."""


class Policy:
    # headers that must not follow a redirect to another host (CVE-2026-0002: Cookie)
    STRIP_ON_REDIRECT = frozenset({"Authorization", "Cookie"})

    def __init__(self, strip=None):
        self.strip = self.STRIP_ON_REDIRECT if strip is None else strip

    def redirect_headers(self, headers):
        return {k: v for k, v in headers.items() if k not in self.strip}


DEFAULT = Policy()
