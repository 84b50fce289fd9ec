# Hooks for `pylivepatch build h11==0.15.0 h11==0.16.0 --allow instance-state`.
#
# 0.16.0 keeps ChunkedReader._bytes_to_discard as the bytes still to match (b"\r\n",
# b"\n", b"") where 0.15.0 kept their number (2, 1, 0). A reader made before the patch
# holds a number, which the fixed __call__ cannot use; after a revert, a reader the new
# code touched would hold bytes, which the old __call__ cannot use. A data descriptor on
# the class keeps the instance's value in the OLD form (the number) and gives the new
# code the NEW form: the trailing len(n) bytes of b"\r\n" are the only values either
# version stores, so the two forms map one to one. Set in the same pause as the code,
# removed by the revert: old code then reads the numbers it always had.

_CRLF = b"\r\n"


class _BytesToDiscard:
    """``ChunkedReader._bytes_to_discard`` as 0.16.0 reads it, stored as 0.15.0 did."""

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        value = obj.__dict__.get("_bytes_to_discard", 0)
        if isinstance(value, bytes):  # set while the descriptor was away: already new
            return value
        return _CRLF[len(_CRLF) - value :] if value else b""

    def __set__(self, obj, value):
        if isinstance(value, bytes):
            if not _CRLF.endswith(value):
                raise ValueError(f"h11 payload: unexpected _bytes_to_discard {value!r}")
            value = len(value)
        obj.__dict__["_bytes_to_discard"] = value


_bytes_to_discard = _BytesToDiscard()
patch.data("h11._readers:ChunkedReader._bytes_to_discard", _bytes_to_discard)  # noqa: F821
