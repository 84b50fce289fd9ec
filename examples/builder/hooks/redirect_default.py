# Hooks for `pylivepatch build shop-1.0 shop-1.0.1 --allow captured-constant`.
#
# The fix adds Cookie to Policy.STRIP_ON_REDIRECT; the payload rebinds that constant.
# But `DEFAULT = Policy()` copied the old set into DEFAULT.strip at import, and every
# redirect through DEFAULT reads the copy. Update the copy before the swap, keep the
# old value in the payload's state, and put it back on revert (or if the apply failed).
import sys

REDIRECT_COPY = 1  # state id: "DEFAULT.strip of shop.headers, as it was"
patch.state(id=REDIRECT_COPY, version=1)  # noqa: F821 - the generated payload's Patch


@patch.pre_apply  # noqa: F821
def update_the_copy(ctx):
    if "shop.headers" not in ctx.modules:
        return
    default = sys.modules["shop.headers"].DEFAULT
    ctx.state(REDIRECT_COPY).data = {"strip": default.strip}
    default.strip = default.strip | {"Cookie"}


def _put_back(ctx):
    saved = ctx.state(REDIRECT_COPY).data
    if saved and "shop.headers" in ctx.modules:
        sys.modules["shop.headers"].DEFAULT.strip = saved["strip"]


@patch.post_apply  # noqa: F821
def undo_if_the_apply_failed(ctx):
    if ctx.rc != 0:
        _put_back(ctx)


@patch.post_revert  # noqa: F821
def restore_the_copy(ctx):
    if ctx.rc == 0:
        _put_back(ctx)
