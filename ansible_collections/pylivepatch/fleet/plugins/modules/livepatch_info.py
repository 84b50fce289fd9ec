#!/usr/bin/python
# Copyright: pylivepatch developers
# MIT License (see LICENSE in the pylivepatch repository)
"""What pylivepatch payloads an app has on this host: in its processes and installed."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: livepatch_info
short_description: The pylivepatch payloads of an app on a host
version_added: "0.1.0"
description:
  - Lists every running process of an app on the managed host with the payloads each
    has (name, state, build id), and the payloads installed for the app. Changes nothing.
options:
  app:
    description: The app name the processes were started with.
    type: str
    required: true
  executable:
    description: The C(pylivepatch) command on the managed host (default, found on PATH).
    type: path
author:
  - pylivepatch developers
"""

EXAMPLES = r"""
- name: What does shop run here
  pylivepatch.fleet.livepatch_info:
    app: shop
  register: shop_patches
"""

RETURN = r"""
processes:
  description: One entry a live process of the app.
  returned: always
  type: list
  elements: dict
  sample: [{"pid": 4242, "payloads": [{"name": "fix-login", "state": "APPLIED", "build_id": "2d3d..."}]}]
installed:
  description: The payloads installed for the app, in the order new processes apply them.
  returned: always
  type: list
  elements: dict
  sample: [{"seq": 1, "name": "fix-login", "build_id": "2d3d...", "version": "2"}]
"""

import json

from ansible.module_utils.basic import AnsibleModule


def _call(module, executable, *args):
    rc, out, err = module.run_command([executable] + list(args) + ["--json"])
    try:
        doc = json.loads(out)
    except ValueError:
        doc = None
    if rc != 0:
        error = doc.get("error", {}) if isinstance(doc, dict) else {}
        return None, error.get("code", "error"), error.get("message") or err.strip()
    return doc, None, None


def main():
    module = AnsibleModule(
        argument_spec=dict(
            app=dict(type="str", required=True),
            executable=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    app = module.params["app"]
    executable = module.params["executable"] or module.get_bin_path("pylivepatch", required=True)
    procs, code, message = _call(module, executable, "list", "--app", app)
    if code == "not-found":
        procs = {}  # no process of the app runs here
    elif code:
        module.fail_json(msg="%s: %s" % (code, message), error_code=code)
    installed, code, message = _call(module, executable, "list", "--installed", "--app", app)
    if code:
        module.fail_json(msg="%s: %s" % (code, message), error_code=code)
    module.exit_json(
        changed=False,
        processes=[
            {
                "pid": int(pid),
                "payloads": [
                    {"name": s["name"], "state": s["state"], "build_id": s["build_id"]}
                    for s in payloads
                ],
            }
            for pid, payloads in sorted(procs.items(), key=lambda kv: int(kv[0]))
        ],
        installed=[
            {k: i[k] for k in ("seq", "name", "build_id", "version")} for i in installed
        ],
    )


if __name__ == "__main__":
    main()
