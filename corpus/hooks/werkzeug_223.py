# Hooks for `pylivepatch build werkzeug==2.2.2 werkzeug==2.2.3 --allow dataclass-fields
# --allow computed-data` (the builder migrates the four new instance attributes of the
# form parsers by itself: class-level defaults).
#
# 1. RulePart (werkzeug.routing.rules) is a dataclass; 2.2.3 adds the field `suffixed`
#    (between `static` and `weight`), which the fixed Rule._parse_rule/compile pass to
#    RulePart(...) and StateMachineMatcher.match reads from every part it tests. The
#    class's __init__, __eq__, __repr__, __match_args__ and __dataclass_fields__ were
#    generated from 2.2.2's fields at import.
#    - A part made before the patch (every rule compiled at start-up) has no `suffixed`:
#      a class-level `suffixed = False` (data, set in the pause) answers for it, and
#      False is provably what it would hold: 2.2.2's parser never makes a suffixed
#      pattern (2.2.3 sets True only where it also rewrites the pattern to end in
#      `(?<!/)(/?)`, which no 2.2.2 part has).
#    - The generated members are set again for 2.2.3's fields. The payload cannot carry
#      them as data: the OLD source defines none of them, so the payload would "add"
#      members the running class has. pre_apply sets them instead, before the pause, in
#      a form both versions' callers take (every caller passes keywords; `suffixed`
#      defaults to False, which the class default says anyway), and post_revert (or
#      post_apply, if the apply failed) puts the generated ones back.
# 2. werkzeug.security._os_alt_seps: 2.2.3 spells `os.path.sep` as `os.sep`, the same
#    object, so the list the process holds is the one 2.2.3 computes. pre_apply checks
#    that instead of trusting it, and vetoes the payload if it were not so.

import dataclasses as _dc
import os as _os
import sys as _sys

_RULES = "werkzeug.routing.rules"
_MEMBERS = ("__init__", "__eq__", "__repr__", "__match_args__", "__dataclass_fields__")


@_dc.dataclass
class _RulePart223:
    """2.2.3's RulePart fields: the source of the generated __eq__, __repr__ and fields."""

    content: "str"
    final: "bool"
    static: "bool"
    suffixed: "bool"
    weight: "object"


def _rulepart_init(self, content, final, static, suffixed=False, weight=None):
    """2.2.3's generated __init__, with `suffixed` optional for 2.2.2's callers."""
    if weight is None:
        raise TypeError("RulePart.__init__() missing required argument: 'weight'")
    self.content = content
    self.final = final
    self.static = static
    self.suffixed = suffixed
    self.weight = weight


_NEW = {
    "__init__": _rulepart_init,
    "__eq__": vars(_RulePart223)["__eq__"],
    "__repr__": vars(_RulePart223)["__repr__"],
    "__match_args__": ("content", "final", "static", "suffixed", "weight"),
    "__dataclass_fields__": vars(_RulePart223)["__dataclass_fields__"],
}
_saved: dict = {}  # the running class's generated members, while the payload's are set

patch.data(f"{_RULES}:RulePart.suffixed", False)  # noqa: F821


def _set_members():
    rules = _sys.modules.get(_RULES)
    if rules is None or _saved:  # not imported yet (the hook runs again when it is)
        return
    cls = vars(rules)["RulePart"]
    _saved.update({m: vars(cls)[m] for m in _MEMBERS if m in vars(cls)})
    for member, value in _NEW.items():
        setattr(cls, member, value)


def _restore_members():
    rules = _sys.modules.get(_RULES)
    if rules is None or not _saved:
        return
    cls = vars(rules)["RulePart"]
    for member in _MEMBERS:
        if member in _saved:
            setattr(cls, member, _saved[member])
        elif member in vars(cls):
            delattr(cls, member)
    _saved.clear()


def _alt_seps_as_new():
    security = _sys.modules.get("werkzeug.security")
    if security is None:  # imported after the patch: 2.2.3's own expression has no say
        return True
    new = [sep for sep in [_os.sep, _os.path.altsep] if sep is not None and sep != "/"]
    return vars(security).get("_os_alt_seps") == new


@patch.pre_apply  # noqa: F821
def _pre_apply(ctx):
    if not _alt_seps_as_new():
        ctx.log("werkzeug.security._os_alt_seps is not what 2.2.3 computes: vetoed")
        return 1
    _set_members()
    return 0


@patch.post_apply  # noqa: F821
def _post_apply(ctx):
    if ctx.rc != 0:  # the swap failed: the process keeps 2.2.2's members too
        _restore_members()


@patch.post_revert  # noqa: F821
def _post_revert(ctx):
    if ctx.rc == 0:
        _restore_members()
