"""The operator's side as a library: which processes an action is for, and an action
on every one of them, all or nothing. The command line is a thin shell over it
(``pylivepatch.cli``); a Python program reaches the same algorithm here.

- :mod:`.targets`: the processes with an agent (``discover``) and those a
  :class:`~.targets.Targets` names (``select``): pids, apps and process trees.
- :mod:`.together`: ``act``, an upload, load, apply, revert, replace or unload on
  every selected process, all or nothing, and its :class:`~.together.Outcome`.
"""
