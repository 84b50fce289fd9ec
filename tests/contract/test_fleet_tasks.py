"""The fleet's report follows the playbooks' tasks by their ids (``pylivepatch: ID`` task
names): every id the command line follows is a task of the playbooks, so renaming a
task without the follower (or the other way round) fails here, not in a rollout.

Read from the source with ``ast`` and the playbooks as text: nothing is imported or run.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLLOWER = ROOT / "src" / "pylivepatch" / "cli" / "fleet.py"
PLAYBOOKS = ROOT / "ansible_collections" / "pylivepatch" / "fleet" / "playbooks"
TASK = re.compile(r'^\s*- name: "pylivepatch: (.+)"\s*$', re.M)


def _strings(node: ast.AST, constants: dict[str, ast.AST]) -> set[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, (ast.Tuple, ast.Set, ast.List)):
        return set().union(*(_strings(e, constants) for e in node.elts))
    if isinstance(node, ast.Dict):
        return set().union(*(_strings(k, constants) for k in node.keys if k is not None))
    if isinstance(node, ast.Call) and node.args:  # frozenset({...})
        return _strings(node.args[0], constants)
    if isinstance(node, ast.Name) and node.id in constants:
        return _strings(constants[node.id], constants)
    return set()


def followed(source: str | None = None) -> set[str]:
    """Every task id the follower (by default cli/fleet.py) compares a task's name with
    (``task == "x"``, ``task in (...)``, ``task in CONSTANT``)."""
    tree = ast.parse(source if source is not None else FOLLOWER.read_text())
    constants = {
        t.id: n.value
        for n in tree.body
        if isinstance(n, (ast.Assign, ast.AnnAssign)) and n.value is not None
        for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
        if isinstance(t, ast.Name)
    }
    ids: set[str] = set()
    for node in ast.walk(tree):
        is_task = isinstance(node, ast.Compare) and isinstance(node.left, ast.Name)
        if is_task and node.left.id == "task":  # type: ignore[attr-defined]
            for right in node.comparators:  # type: ignore[attr-defined]
                ids |= _strings(right, constants)
    return ids


def tasks() -> set[str]:
    return {m for p in PLAYBOOKS.glob("*.yml") for m in TASK.findall(p.read_text())}


def test_every_task_the_fleet_follows_is_in_the_playbooks():
    ids, names = followed(), tasks()
    assert {"batch", "apply", "health", "revert this host", "stop"} <= ids, ids
    assert ids <= names, f"followed but in no playbook: {sorted(ids - names)}"


def test_the_check_sees_a_followed_task_that_no_playbook_has():
    """The checker itself: a follower that waits for a task no playbook has is caught,
    whether the name is compared directly or through a module constant."""
    source = FOLLOWER.read_text() + (
        '\nLATER = frozenset({"apply later"})\n'
        "def _f(task):\n"
        '    return task == "copy twice" or task in LATER\n'
    )
    assert followed(source) - tasks() == {"apply later", "copy twice"}
