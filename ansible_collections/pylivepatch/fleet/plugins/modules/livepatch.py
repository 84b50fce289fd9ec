#!/usr/bin/python
# Copyright: pylivepatch developers
# MIT License (see LICENSE in the pylivepatch repository)
"""Bring one pylivepatch payload to a state on every process of an app on this host."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: livepatch
short_description: Apply, revert, install or remove a pylivepatch payload on a host
version_added: "0.1.0"
description:
  - Brings one payload to a state in every running process of an app on the managed
    host (the processes started with C(pylivepatch run --app APP)) and in the app's
    install store (what processes started later apply at start).
  - Works through the host's C(pylivepatch) command line with C(--json), so an action
    on several processes is all or nothing, as C(pylivepatch load --app) is.
  - Idempotent; supports check mode and diff mode.
  - Returns the per-process result table.
options:
  app:
    description: The app name the processes were started with.
    type: str
    required: true
  state:
    description:
      - C(applied) installs the payload (restarts come up patched) and applies it in
        every running process of the app, all or nothing.
      - C(installed) installs it only; running processes are not changed.
      - C(reverted) reverts it in every process where it is applied and uninstalls
        it; it stays uploaded, so applying it again is quick.
      - C(absent) also unloads it from every process.
    type: str
    choices: [applied, reverted, installed, absent]
    default: applied
  src:
    description:
      - Path on the managed host of the payload archive (C(.lpz)).
      - Required with O(state=applied) and O(state=installed).
    type: path
  name:
    description:
      - The payload name. Required with O(state=reverted) and O(state=absent) unless
        O(src) is given (then it is read from the archive).
    type: str
  keys:
    description:
      - A trusted public key, or a directory of C(*.pub), on the managed host. When
        set, the signature of O(src) is verified with them before anything changes,
        and an unsigned or tampered payload fails the task with nothing changed.
    type: path
  executable:
    description: The C(pylivepatch) command on the managed host (default, found on PATH).
    type: path
  timeout:
    description: Seconds a transition may take in each process (C(--timeout)).
    type: float
author:
  - pylivepatch developers
"""

EXAMPLES = r"""
- name: Patch every process of shop, and its later restarts
  pylivepatch.fleet.livepatch:
    app: shop
    src: /var/lib/pylivepatch/fleet/fix-login.lpz
    keys: /etc/pylivepatch/keys
    state: applied

- name: Take it out again everywhere on this host
  pylivepatch.fleet.livepatch:
    app: shop
    name: fix-login
    state: reverted
"""

RETURN = r"""
name:
  description: The payload name.
  returned: always
  type: str
  sample: fix-login
build_id:
  description: The payload's build id (when O(src) was given).
  returned: when src was given
  type: str
signature:
  description: The signature status found by the verification (O(keys)).
  returned: when keys was given
  type: str
  sample: "signed by 5f1c0e2a9b7d4c31 (trusted)"
installed:
  description: Whether the payload is installed for the app, before and after.
  returned: always
  type: dict
  sample: {"before": false, "after": true}
processes:
  description: One row a process of the app on this host.
  returned: always
  type: list
  elements: dict
  contains:
    pid:
      description: The process id.
      type: int
    before:
      description: The payload's state in the process before (APPLIED, CHECKED, or absent).
      type: str
    after:
      description: Its state after (in check mode, the state it would have).
      type: str
    result:
      description: What this task did in that process, as the command line reports it.
      type: str
  sample: [{"pid": 4242, "before": "absent", "after": "APPLIED", "result": "applied"}]
error_code:
  description: The pylivepatch error code of a failure (expectation-failed, busy, ...).
  returned: failure
  type: str
"""

import json
import os
import shutil
import tempfile
import zipfile

from ansible.module_utils.basic import AnsibleModule

ABSENT = "absent"
APPLIED = "APPLIED"


class PylivepatchFailed(Exception):
    """A pylivepatch command failed: its error code, message and process table."""

    def __init__(self, code, message, processes=None):
        super().__init__("%s: %s" % (code, message))
        self.code = code
        self.message = message
        self.processes = processes or {}


class Host:
    """The pylivepatch command line of the managed host, always with --json."""

    def __init__(self, module, executable, app):
        self.module = module
        self.executable = executable
        self.app = app

    def call(self, *args):
        cmd = [self.executable] + [str(a) for a in args] + ["--json"]
        rc, out, err = self.module.run_command(cmd)
        doc = _json(out)
        if rc != 0:
            error = doc.get("error", {}) if isinstance(doc, dict) else {}
            text = err.strip().splitlines()[-1] if err.strip() else out.strip()
            raise PylivepatchFailed(
                error.get("code", "error"),
                error.get("message") or text or "%s exited %d" % (" ".join(cmd), rc),
                doc.get("processes") if isinstance(doc, dict) else None,
            )
        if doc is None:
            raise PylivepatchFailed("internal", "%s printed no JSON" % " ".join(cmd))
        return doc

    def verify(self, path, keys):
        return self.call("verify", path, "--keys", keys)

    def processes(self):
        """{pid: {payload name: (state, build id)}} of every live process of the app."""
        try:
            doc = self.call("list", "--app", self.app)
        except PylivepatchFailed as exc:
            if exc.code == "not-found":
                return {}  # no process of the app runs on this host
            raise
        return {
            int(pid): {s["name"]: (s["state"], s["build_id"]) for s in payloads}
            for pid, payloads in doc.items()
        }

    def installed(self):
        """{payload name: installed item} for the app."""
        return {i["name"]: i for i in self.call("list", "--installed", "--app", self.app)}


def _manifest(path):
    """Name and build id from the archive's manifest; the host's pylivepatch checks the
    whole archive when it installs or loads it."""
    try:
        with zipfile.ZipFile(path) as archive:
            manifest = json.loads(archive.read("manifest.json"))
        return {"name": str(manifest["name"]), "build_id": str(manifest["build_id"])}
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        raise PylivepatchFailed(
            "invalid-payload", "%s is not a payload archive: %s" % (path, exc)
        ) from None


def _json(text):
    """The JSON document a command printed: all of its output, else its last line."""
    for candidate in (text, text.strip().rsplit("\n", 1)[-1]):
        try:
            doc = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(doc, (dict, list)):
            return doc
    return None


def _state(procs, pid, name):
    entry = procs.get(pid, {}).get(name)
    return entry[0] if entry else ABSENT


def _describe(name, installed, procs):
    lines = ["installed for app: %s" % ("yes" if installed else "no")]
    for pid in sorted(procs):
        lines.append("process %d: %s %s" % (pid, name, _state(procs, pid, name)))
    return "\n".join(lines) + "\n"


def _conflicts(name, build_id, installed, procs):
    """A payload of the same name but another build on this host: refuse, name it."""
    item = installed.get(name)
    if build_id and item and item["build_id"] != build_id:
        return "payload %s is installed for this app with build id %s, not %s" % (
            name,
            item["build_id"][:16],
            build_id[:16],
        )
    for pid in sorted(procs):
        entry = procs[pid].get(name)
        if build_id and entry and entry[1] != build_id:
            return "process %d has payload %s with build id %s, not %s" % (
                pid,
                name,
                entry[1][:16],
                build_id[:16],
            )
    return None


def run(module, host, params):
    state = params["state"]
    src = params["src"]
    result = {"changed": False}
    build_id = None
    name = params["name"]
    if src:
        if not os.path.isfile(src):
            raise PylivepatchFailed("not-found", "payload file %s does not exist on this host" % src)
        manifest = _manifest(src)
        if name and name != manifest["name"]:
            raise PylivepatchFailed(
                "invalid-payload", "%s holds payload %s, not %s" % (src, manifest["name"], name)
            )
        name, build_id = manifest["name"], manifest["build_id"]
        result["build_id"] = build_id
    if params["keys"]:
        if not src:
            raise PylivepatchFailed("invalid-payload", "keys needs src: the archive to verify")
        # Before anything changes: a payload that is not signed by a trusted key stops here.
        result["signature"] = host.verify(src, params["keys"])["signature"]
    result["name"] = name

    before_procs = host.processes()
    installed = host.installed()
    conflict = _conflicts(name, build_id, installed, before_procs)
    if conflict and state in ("applied", "installed"):
        raise PylivepatchFailed(
            "exists", conflict + "; take it out first (state=absent with name=%s)" % name
        )
    was_installed = name in installed

    applied_in = [p for p in sorted(before_procs) if _state(before_procs, p, name) == APPLIED]
    present_in = [p for p in sorted(before_procs) if _state(before_procs, p, name) != ABSENT]
    want_installed = state in ("applied", "installed")
    to_apply = (
        [p for p in sorted(before_procs) if p not in applied_in] if state == "applied" else []
    )
    to_revert = applied_in if state in ("reverted", "absent") else []
    to_unload = present_in if state == "absent" else []
    change_install = want_installed != was_installed

    expected = {}
    for pid in before_procs:
        now = _state(before_procs, pid, name)
        if pid in to_apply:
            expected[pid] = (APPLIED, "would apply")
        elif pid in to_unload:
            expected[pid] = (ABSENT, "would unload")
        elif pid in to_revert:
            expected[pid] = ("CHECKED", "would revert")
        else:
            expected[pid] = (now, "no change")
    changed = bool(change_install or to_apply or to_revert or to_unload)
    result["changed"] = changed
    results = {}
    after_procs = before_procs
    if changed and not module.check_mode:
        results, after_procs = change(host, name, src, params, change_install, want_installed,
                                      to_apply, to_revert, to_unload)  # fmt: skip
        if after_procs is None:  # applied: every process load named is now applied
            after_procs = {pid: dict(before_procs.get(pid, {})) for pid in
                           set(before_procs) | set(results)}  # fmt: skip
            for pid in results:
                after_procs[pid][name] = (APPLIED, build_id)
        now_installed = want_installed
    else:
        now_installed = want_installed if changed else was_installed

    rows = []
    for pid in sorted(set(before_procs) | set(after_procs)):
        before = _state(before_procs, pid, name) if pid in before_procs else "not running"
        if module.check_mode:
            after, text = expected.get(pid, (before, "no change"))
        else:
            after = _state(after_procs, pid, name) if pid in after_procs else "exited"
            text = results.get(pid, "no change" if before == after else "changed")
        rows.append({"pid": pid, "before": before, "after": after, "result": text})
    result["processes"] = rows
    result["installed"] = {"before": was_installed, "after": now_installed}
    if module._diff:
        after_view = {r["pid"]: {name: (r["after"], build_id)} for r in rows
                      if r["after"] not in (ABSENT, "exited")}  # fmt: skip
        result["diff"] = {
            "before": _describe(name, was_installed, before_procs),
            "after": _describe(name, now_installed, after_view),
            "before_header": "%s on app %s" % (name, host.app),
            "after_header": "%s on app %s" % (name, host.app),
        }
    return result


def change(host, name, src, params, change_install, want_installed, to_apply, to_revert,
           to_unload):  # fmt: skip
    """Make the changes; a failure puts back what this task changed and raises."""
    timeout = ["--timeout", params["timeout"]] if params["timeout"] else []
    results = {}
    if want_installed:
        # install first: a process that starts meanwhile comes up patched
        if change_install:
            host.call("install", src, "--app", host.app)
        if to_apply:
            try:
                doc = host.call("load", src, "--app", host.app, *timeout)
            except PylivepatchFailed as exc:
                if change_install:
                    _quietly(host, "uninstall", name, "--app", host.app)
                raise PylivepatchFailed(exc.code, exc.message, _pids(exc.processes)) from None
            results.update(_pids(doc.get("processes", {})))
        return results, None
    # reverted / absent: uninstall first, so no process starting meanwhile applies it
    saved = None
    if change_install:
        saved = _keep_copy(host, name)
        host.call("uninstall", name, "--app", host.app)
    try:
        for verb, pids in (("revert", to_revert), ("unload", to_unload)):
            if not pids:
                continue
            args = [verb, name] + [a for p in pids for a in ("-p", p)]
            doc = host.call(*(args + (timeout if verb == "revert" else [])))
            for pid, text in _pids(doc.get("processes", {})).items():
                results[pid] = results[pid] + ", " + text if pid in results else text
        # a process that started between the listing and the uninstall applied it at start
        after = host.processes()
        late = [p for p, payloads in after.items()
                if payloads.get(name, (ABSENT,))[0] == APPLIED]  # fmt: skip
        if late:
            args = ["revert", name] + [a for p in late for a in ("-p", p)]
            for pid, text in _pids(host.call(*args).get("processes", {})).items():
                results[pid] = "started meanwhile: " + text
            after = host.processes()
    except PylivepatchFailed as exc:
        if saved:  # still applied somewhere: keep restarts as they were
            _quietly(host, "install", saved, "--app", host.app)
        raise PylivepatchFailed(exc.code, exc.message, _pids(exc.processes)) from None
    finally:
        if saved:
            shutil.rmtree(os.path.dirname(saved), ignore_errors=True)
    return results, after


def _keep_copy(host, name):
    item = host.installed()[name]
    directory = tempfile.mkdtemp(prefix="livepatch-")
    copy = os.path.join(directory, os.path.basename(item["file"]))
    shutil.copyfile(item["file"], copy)
    return copy


def _quietly(host, *args):
    try:
        host.call(*args)
    except PylivepatchFailed:
        pass


def _pids(processes):
    return {int(pid): text for pid, text in (processes or {}).items()}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            app=dict(type="str", required=True),
            state=dict(
                type="str",
                default="applied",
                choices=["applied", "reverted", "installed", "absent"],
            ),
            src=dict(type="path"),
            name=dict(type="str"),
            keys=dict(type="path", no_log=False),
            executable=dict(type="path"),
            timeout=dict(type="float"),
        ),
        required_if=[
            ("state", "applied", ("src",)),
            ("state", "installed", ("src",)),
            ("state", "reverted", ("name", "src"), True),
            ("state", "absent", ("name", "src"), True),
        ],
        supports_check_mode=True,
    )
    params = module.params
    executable = params["executable"] or module.get_bin_path("pylivepatch", required=True)
    host = Host(module, executable, params["app"])
    try:
        result = run(module, host, params)
    except PylivepatchFailed as exc:
        rows = [{"pid": pid, "result": text} for pid, text in sorted(_pids(exc.processes).items())]
        module.fail_json(msg="%s: %s" % (exc.code, exc.message), error_code=exc.code,
                         processes=rows)  # fmt: skip
    module.exit_json(**result)


if __name__ == "__main__":
    main()
