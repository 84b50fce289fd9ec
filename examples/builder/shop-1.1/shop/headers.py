"""Headers a redirect keeps."""


class Policy:
    # headers that must not follow a redirect to another host
    STRIP_ON_REDIRECT = frozenset({"Authorization"})

    def __init__(self, strip=None):
        self.strip = self.STRIP_ON_REDIRECT if strip is None else strip

    def redirect_headers(self, headers):
        return {k: v for k, v in headers.items() if k not in self.strip}


DEFAULT = Policy()
