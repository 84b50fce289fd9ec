# Hooks for `pylivepatch build shop-1.0 shop-1.1-session --allow instance-state`.
#
# Session.__init__ now sets self.locked_until, which the new Session.login reads.
# Sessions created before the patch do not have it. Before the swap, give the class
# the value __init__ gives new sessions; old sessions then read it from the class.
# Take it away again when the payload is reverted (or its apply failed).
import sys


def _sessions(ctx):
    """The Session class, if shop.auth is imported in this process (hooks run again
    for a module imported later, with ctx.modules naming it)."""
    if "shop.auth" in ctx.modules:
        return sys.modules["shop.auth"].Session
    return None


@patch.pre_apply  # noqa: F821 - `patch` is the generated payload's Patch
def give_old_sessions_a_default(ctx):
    cls = _sessions(ctx)
    if cls is not None:
        cls.locked_until = 0.0


def _take_the_default_away(ctx):
    cls = _sessions(ctx)
    if cls is not None and "locked_until" in vars(cls):
        del cls.locked_until


@patch.post_apply  # noqa: F821
def undo_if_the_apply_failed(ctx):
    if ctx.rc != 0:
        _take_the_default_away(ctx)


@patch.post_revert  # noqa: F821
def drop_the_default(ctx):
    if ctx.rc == 0:
        _take_the_default_away(ctx)
