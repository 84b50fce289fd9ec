"""The kind lists of the contract, declared once: hook kinds (spec §4) and consistency
modes (spec §5). The payload format, the engine, the agent and the command line read
them from here; this module imports nothing, so the command line and an idle agent pay
nothing for it."""

#: the hooks a payload may declare (``manifest.json`` ``hooks``)
HOOK_KINDS = ("pre_apply", "post_apply", "pre_revert", "post_revert", "apply", "revert")

#: the hooks whose refusal vetoes the action
VETOING_HOOKS = ("pre_apply", "pre_revert")

#: consistency modes, the default first
CONSISTENCY = ("transition", "atomic", "immediate")
