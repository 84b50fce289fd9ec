# Hooks for `pylivepatch build starlette==0.47.1 starlette==0.47.2 --allow instance-state`.
#
# 0.47.2's UploadFile.__init__ sets self._max_mem_size = getattr(self.file, "_max_size", 0)
# and the fixed write() reads it (through _will_roll). An UploadFile made before the
# patch (a request being uploaded at that moment) has no such attribute. Its value
# depends on the object (the file it was given), so no class-level constant stands for
# it: a non-data descriptor on the class computes it from the object, as __init__ would
# have. Objects made after the patch set their own (an instance attribute wins over a
# non-data descriptor). Set in the same pause as the code, removed by the revert.


class _MaxMemSize:
    """``self._max_mem_size`` of an UploadFile made before the patch: what 0.47.2's
    ``__init__`` computes from the file (a SpooledTemporaryFile keeps its ``_max_size``
    for its life)."""

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        return getattr(obj.file, "_max_size", 0)


_max_mem_size = _MaxMemSize()
patch.data("starlette.datastructures:UploadFile._max_mem_size", _max_mem_size)  # noqa: F821
