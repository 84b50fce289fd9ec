"""``pylivepatch fleet rollout|revert|status``: a payload over many hosts, on Ansible.

The verbs run the playbooks of the ``pylivepatch.fleet`` collection
(``ansible_collections/pylivepatch/fleet`` in the source tree) through ansible-runner,
and turn the run's events into a report of what each host did. On the hosts, the
collection's ``livepatch`` module drives the host's own ``pylivepatch`` command line, so
each host is all or nothing across its processes as ``pylivepatch load --app`` is.

ansible-core and ansible-runner are the ``fleet`` extra; they are imported only when a
fleet verb runs. See docs/fleet.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LivepatchError
from . import render
from .exits import EXIT_ERROR, EXIT_OK
from .fleet_parser import plan as plan  # the --plan type (tests and docs name it here)

#: where the pylivepatch.fleet collection is, when not in a source checkout
COLLECTIONS_ENV = "PYLIVEPATCH_FLEET_COLLECTIONS"
NEEDS = "pylivepatch fleet needs ansible-core and ansible-runner: pip install 'pylivepatch[fleet]'"


# --- running a playbook -----------------------------------------------------------------


def collections_path() -> Path:
    """The directory holding ``ansible_collections/pylivepatch/fleet``."""
    candidates = [Path(os.environ[COLLECTIONS_ENV])] if os.environ.get(COLLECTIONS_ENV) else []
    candidates.append(Path(__file__).resolve().parents[3])  # a source checkout
    candidates += [Path("~/.ansible/collections").expanduser(),
                   Path("/usr/share/ansible/collections")]  # fmt: skip
    for root in candidates:
        if (root / "ansible_collections" / "pylivepatch" / "fleet" / "galaxy.yml").is_file():
            return root
    raise LivepatchError(
        "not-found",
        f"the pylivepatch.fleet Ansible collection is not found: set {COLLECTIONS_ENV} to the "
        "directory that holds ansible_collections/ (a pylivepatch source tree), or install it "
        "with ansible-galaxy collection install",
    )


def _ansible_playbook() -> str:
    here = Path(sys.executable).with_name("ansible-playbook")
    found = str(here) if here.exists() else shutil.which("ansible-playbook")
    if not found:
        raise LivepatchError("not-found", NEEDS + " (ansible-playbook is not installed)")
    return found


@dataclass
class Run:
    """One playbook run: its events as they came, its return code and its duration."""

    rc: int = 0
    seconds: float = 0.0
    events: list[dict[str, Any]] = field(default_factory=list)
    output: str = ""


def run_playbook(
    name: str, args: argparse.Namespace, extravars: dict[str, Any], on_event: Any = None
) -> Run:
    inventory = Path(args.inventory)
    if not inventory.exists():
        raise LivepatchError("not-found", f"inventory {args.inventory} does not exist")
    try:
        import ansible_runner  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        raise LivepatchError("not-found", NEEDS) from None
    root = collections_path()
    playbook = root / "ansible_collections" / "pylivepatch" / "fleet" / "playbooks" / f"{name}.yml"
    others = os.environ.get("ANSIBLE_COLLECTIONS_PATH", "")
    env = {
        "ANSIBLE_COLLECTIONS_PATH": os.pathsep.join(p for p in (str(root), others) if p),
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_NOCOLOR": "1",
    }
    # the ansible-playbook of this interpreter first, whatever PATH the CLI was run with
    env["PATH"] = os.pathsep.join(
        [str(Path(_ansible_playbook()).parent), os.environ.get("PATH", "")]
    )
    if "ANSIBLE_PIPELINING" not in os.environ:
        env["ANSIBLE_PIPELINING"] = "True"  # one SSH round trip a task instead of three
    done = Run()

    def handler(event: dict[str, Any]) -> bool:
        done.events.append(event)
        if on_event is not None:
            on_event(event)
        return True

    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pylivepatch-fleet-") as tmp:
        runner = ansible_runner.run(
            private_data_dir=tmp,
            playbook=str(playbook),
            inventory=str(inventory.resolve()),
            extravars=extravars,
            envvars=env,
            limit=args.limit,
            quiet=args.json or not args.verbose,  # JSON alone on stdout
            event_handler=handler,
            suppress_env_files=True,
        )
        done.rc = int(runner.rc if runner.rc is not None else 1)
        try:
            done.output = runner.stdout.read()
        except (OSError, ValueError, AttributeError):
            done.output = ""
    done.seconds = time.monotonic() - start
    return done


def _ansible_failure(run: Run) -> LivepatchError:
    """Ansible itself failed (no host ran): its last lines name the cause."""
    lines = [ln.strip() for ln in run.output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "ERROR" in ln or "error" in ln.lower()]
    cause = (errors or lines or [f"ansible-playbook exited {run.rc}"])[-1]
    return LivepatchError("not-found" if "inventory" in cause.lower() else "internal",
                          f"ansible-playbook failed: {cause}")  # fmt: skip


def _res(event: dict[str, Any]) -> dict[str, Any]:
    res = event.get("event_data", {}).get("res", {})
    return res if isinstance(res, dict) else {}


def _task(event: dict[str, Any]) -> str:
    return str(event.get("event_data", {}).get("task", "")).removeprefix("pylivepatch: ")


def _host(event: dict[str, Any]) -> str:
    return str(event.get("event_data", {}).get("host", ""))


def _message(res: dict[str, Any]) -> str:
    if res.get("cmd") is not None and isinstance(res.get("rc"), int):  # a command's result
        output = str(res.get("stderr") or res.get("stdout") or "").strip()
        text = f"exit {res['rc']}" + (f": {output.splitlines()[-1]}" if output else "")
    else:
        text = str(res.get("msg") or res.get("stderr") or res.get("stdout") or "failed")
    return " ".join(text.split())


def _counted(rows: list[dict[str, Any]]) -> str:
    n = len(rows)
    return f"{n} process{'es' if n != 1 else ''}"


# --- rollout --------------------------------------------------------------------------------


@dataclass
class HostReport:
    name: str
    batch: int | None = None
    result: str = "not changed"
    steps: list[str] = field(default_factory=list)
    processes: list[dict[str, Any]] = field(default_factory=list)
    failure: str = ""  # why this host failed its batch, if it did

    def to_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "result": self.result, "failure": self.failure,
                "steps": self.steps, "processes": self.processes}  # fmt: skip


#: tasks where an unreachable host is expected and handled by the playbook
NOT_LOST = frozenset({"health before", "health before (command)", "revert every host touched",
                      "revert this host"})  # fmt: skip

HEALTH_AFTER = {
    "health": "healthy after the change",
    "health (command)": "healthy after the change",
    "health after soak": "healthy after the soak",
    "health after soak (command)": "healthy after the soak",
}


def _healthy(res: dict[str, Any]) -> bool:
    if "status" in res:
        return int(res.get("status") or 0) // 100 == 2
    return res.get("rc") == 0


class Rollout:
    """Follows the rollout playbook's events: batches, what each host did, the gate."""

    def __init__(self, build_id: str, quiet: bool) -> None:
        self.build_id = build_id
        self.quiet = quiet
        self.hosts: dict[str, HostReport] = {}
        self.order: list[str] = []
        self.batches: list[list[str]] = []
        self.gate_failed_in: int | None = None
        self.revert_failed: list[str] = []
        self.touched: list[str] = []  # hosts the payload was copied to
        self.lost: list[str] = []  # hosts that became unreachable after that

    def host(self, name: str) -> HostReport:
        if name not in self.hosts:
            self.hosts[name] = HostReport(name)
        return self.hosts[name]

    def say(self, text: str) -> None:
        if not self.quiet:
            render.line(text)

    def step(self, name: str, text: str, result: str | None = None, fails: bool = False) -> None:
        report = self.host(name)
        report.steps.append(text)
        if result:
            report.result = result
        if fails and not report.failure:
            report.failure = text
        self.say(f"  {name}: {text}")

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event", "")
        task, host, res = _task(event), _host(event), _res(event)
        self._progress(kind, task, host, res)
        self._outcome(kind, task, host, res)

    def _progress(self, kind: str, task: str, host: str, res: dict[str, Any]) -> None:
        """The batches, and the hosts the payload was copied to."""
        ok = kind == "runner_on_ok"
        if kind == "playbook_on_task_start" and task == "batch":
            self.batches.append([])
        elif task == "batch" and ok:
            facts = res.get("ansible_facts", {})
            if not self.order:
                self.order = list(facts.get("pylivepatch_all_hosts", []))
            self.batches[-1] = list(facts.get("pylivepatch_batch", []))
            if host == self.batches[-1][0]:
                self.say(f"batch {len(self.batches)}: {', '.join(self.batches[-1])}")
            self.host(host).batch = len(self.batches)
        elif task == "copy" and kind.startswith("runner_on_") and host not in self.touched:
            self.touched.append(host)

    def _outcome(self, kind: str, task: str, host: str, res: dict[str, Any]) -> None:
        """What a task's result says of a host: each step, its result, its failure."""
        ok = kind == "runner_on_ok"
        failed = kind in ("runner_on_failed", "runner_on_unreachable")
        if kind == "runner_on_unreachable" and task not in NOT_LOST and host not in self.lost:
            # Ansible drops such a host from the play: no rescue, and max_fail_percentage
            # does not count it. rollout() reverts the others after the play.
            self.lost.append(host)
            self.step(host, f"UNREACHABLE during {task}, its state is unknown: {_message(res)}",
                      "unreachable", fails=True)  # fmt: skip
        elif task == "unreachable" and failed:
            self.step(host, f"unreachable: {_message(res)}", "unreachable", fails=True)
        elif task == "unhealthy before" and failed:
            self.step(host, f"unhealthy before the change: {_message(res)}", "not changed",
                      fails=True)  # fmt: skip
        elif task in ("health before", "health before (command)") and ok:
            if not res.get("skipped") and not res.get("unreachable") and _healthy(res):
                self.step(host, "healthy before")
        elif task == "apply" and ok:
            rows = res.get("processes", [])
            self.host(host).processes = rows
            what = "applied" if res.get("changed") else "already applied"
            self.step(host, f"{what} in {_counted(rows)} (build {self.build_id[:16]})",
                      "patched" if res.get("changed") else "already patched")  # fmt: skip
            if res.get("signature"):
                self.step(host, f"signature {res['signature']}")
        elif task == "apply" and failed:
            self.host(host).processes = res.get("processes", [])
            self.step(host, f"apply failed: {_message(res)}", "failed", fails=True)
        elif task in HEALTH_AFTER and ok and not res.get("skipped"):
            self.step(host, HEALTH_AFTER[task])
        elif task in HEALTH_AFTER and failed:
            tries = res.get("attempts", 1)
            self.step(host, f"UNHEALTHY {HEALTH_AFTER[task].removeprefix('healthy ')} "
                      f"({tries} tr{'ies' if tries != 1 else 'y'}): {_message(res)}", "failed",
                      fails=True)  # fmt: skip
        elif task == "soak" and ok and not res.get("skipped"):
            self.say(f"  soaked {res.get('delta', '?')} s")
        elif task == "revert every host touched" and kind in ("runner_on_ok", "runner_on_failed"):
            self.fleet_reverted(res)
        elif task == "revert this host" and kind in ("runner_on_ok", "runner_on_failed"):
            if not res.get("skipped"):
                self.reverted(host, res, "reverted (within the gate)")
        elif task == "stop" and failed:
            report = self.host(host)
            # the rescue's message: "TASK: why (what the gate decided)"
            report.failure = report.failure or _message(res).rsplit(" (", 1)[0]
            if "gate failed" in _message(res) and self.gate_failed_in is None:
                self.gate_failed_in = report.batch

    def fleet_reverted(self, res: dict[str, Any]) -> None:
        items = [r for r in res.get("results", []) if not r.get("skipped")]
        if not items:
            return
        self.say("  gate failed: reverting every host touched: "
                 + ", ".join(str(r.get("item")) for r in items))  # fmt: skip
        for item in items:
            self.reverted(str(item.get("item")), item, "reverted")

    def reverted(self, name: str, res: dict[str, Any], result: str) -> None:
        if res.get("failed") or res.get("unreachable"):
            self.revert_failed.append(name)
            self.step(name, f"REVERT FAILED: {_message(res)}", "revert failed")
            return
        rows = res.get("processes", [])
        changed = [r for r in rows if r.get("before") == "APPLIED"]
        text = f"reverted in {_counted(changed)}" if res.get("changed") else "nothing to revert"
        if res.get("installed", {}).get("before"):
            text += ", uninstalled"
        # a host with nothing to revert keeps its result (failed before any change)
        self.step(name, text, result if res.get("changed") else None)


def rollout(args: argparse.Namespace) -> int:
    from ..payload import archive

    data = archive.read_file(args.file)
    payload = archive.read(data)
    man = payload.manifest
    if args.keys and payload.signature is None:
        raise LivepatchError(
            "signature-required",
            f"payload {man.name} ({args.file}) is not signed, and --keys asks every host to "
            f"verify its signature: sign it (pylivepatch sign {args.file} --key KEY)",
        )
    with tempfile.TemporaryDirectory(prefix="pylivepatch-fleet-") as stage:
        # copied to each host as NAME-BUILD.lpz, whatever the file is called here
        staged = Path(stage) / f"{man.name}-{man.build_id[:16]}.lpz"
        staged.write_bytes(data)
        return _rollout(args, man, staged)


def _rollout(args: argparse.Namespace, man: Any, staged: Path) -> int:
    extravars: dict[str, Any] = {
        "pylivepatch_payload": str(staged),
        "pylivepatch_payload_name": man.name,
        "pylivepatch_build_id": man.build_id,
        "pylivepatch_app": args.app,
        "pylivepatch_plan": args.plan,
        "pylivepatch_max_fail_percentage": args.max_fail,
        "pylivepatch_health": args.health,
        "pylivepatch_health_retries": args.health_retries,
        "pylivepatch_health_delay": args.health_delay,
        "pylivepatch_soak": args.soak,
    }
    if args.keys:
        extravars["pylivepatch_keys"] = args.keys
    follow = Rollout(man.build_id, quiet=args.json)
    follow.say(
        f"rollout {man.name} (build {man.build_id[:16]}) to app {args.app}: plan "
        f"{','.join(map(str, args.plan))}, gate {args.max_fail:g}% failed hosts a batch, "
        f"health {args.health}, soak {args.soak} s"
    )
    run = run_playbook("rollout", args, extravars, follow)
    if not follow.batches:
        if run.rc == 0:
            raise LivepatchError("not-found", f"no host of {args.inventory} matched"
                                 + (f" --limit {args.limit}" if args.limit else ""))  # fmt: skip
        raise _ansible_failure(run)
    names = follow.order or list(follow.hosts)
    for name in names:
        follow.host(name)
    seconds = run.seconds
    if follow.lost and follow.gate_failed_in is None:
        seconds += _revert_after_lost(args, man.name, follow)
    failed = [n for n in names if follow.hosts[n].failure]
    if follow.gate_failed_in is not None:
        touched = [n for n in names if follow.hosts[n].result == "reverted"]
        untouched = [n for n in names if follow.hosts[n].batch is None]
        error = (
            "gate-failed",
            f"the gate failed in batch {follow.gate_failed_in}: "
            f"{', '.join(f'{n} ({follow.hosts[n].failure})' for n in failed)}; the rollout stopped "
            f"and every host it touched was reverted ({', '.join(touched) or 'none'})"
            + (f"; {', '.join(untouched)} never reached" if untouched else "")
            + ". Look at the failed hosts before rolling out again",
        )
    elif run.rc != 0 and not failed:
        error = ("rollout-failed", f"the rollout did not finish (ansible-playbook exited "
                 f"{run.rc}); see the table")  # fmt: skip
    else:
        error = None  # done; hosts that failed within the gate were reverted
    if follow.revert_failed:
        error = (
            "revert-failed",
            f"the revert failed on {', '.join(follow.revert_failed)}: those hosts may still "
            f"run {man.name}; fix them by hand (pylivepatch fleet revert {man.name})",
        )
    doc = {
        "ok": error is None,
        "action": "rollout",
        "payload": man.name,
        "build_id": man.build_id,
        "app": args.app,
        "plan": args.plan,
        "batches": follow.batches,
        "seconds": round(seconds, 1),
        "hosts": {n: follow.hosts[n].to_dict() for n in names},
    }
    if error:
        doc["error"] = {"code": error[0], "errno": None, "message": error[1]}
    if args.json:
        print(json.dumps(doc))
    else:
        render.line("")
        render.table(
            ["HOST", "BATCH", "RESULT", "WHAT IT DID"],
            [[n, follow.hosts[n].batch or "-", follow.hosts[n].result,
              "; ".join(follow.hosts[n].steps) or "not reached"] for n in names],
        )  # fmt: skip
        done = sum(1 for n in names if follow.hosts[n].result in ("patched", "already patched"))
        render.line(f"{done} of {len(names)} hosts run {man.name}; {len(follow.batches)} "
                    f"batch{'es' if len(follow.batches) != 1 else ''} in {seconds:.1f} s")  # fmt: skip
        if error:
            print(f"pylivepatch: {error[0]}: {error[1]}", file=sys.stderr)
        elif failed:
            render.line(f"within the gate ({args.max_fail:g}%), each reverted: "
                        + "; ".join(f"{n}: {follow.hosts[n].failure}" for n in failed))  # fmt: skip
    return EXIT_OK if error is None else EXIT_ERROR


def _revert_after_lost(args: argparse.Namespace, name: str, follow: Rollout) -> float:
    """A host lost in the middle of its batch fails the gate too: the one automatic
    revert, of every other host touched, runs here, after the play. Returns its time."""
    targets = [h for h in follow.touched if h not in follow.lost]
    follow.gate_failed_in = follow.hosts[follow.lost[0]].batch
    if not targets:
        return 0.0
    follow.say(f"  {', '.join(follow.lost)} lost: reverting every host touched: "
               + ", ".join(targets))  # fmt: skip
    extravars = {"pylivepatch_app": args.app, "pylivepatch_payload_name": name,
                 "pylivepatch_state": "reverted"}  # fmt: skip
    limited = argparse.Namespace(**{**vars(args), "limit": ",".join(targets)})
    run = run_playbook("revert", limited, extravars)
    results = _per_host(run, "revert")
    for host in targets:
        kind, res = results.get(host, ("failed", {"msg": "no result"}))
        follow.reverted(host, res if kind == "ok" else {**res, "failed": True}, "reverted")
    return run.seconds


# --- revert and status -------------------------------------------------------------------


def _per_host(run: Run, task: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """{host: (ok|failed|unreachable, result)} of one task of a run."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for event in run.events:
        kind = event.get("event", "")
        if _task(event) != task or not _host(event):
            continue
        if kind == "runner_on_ok":
            out[_host(event)] = ("ok", _res(event))
        elif kind == "runner_on_failed":
            out[_host(event)] = ("failed", _res(event))
        elif kind == "runner_on_unreachable":
            out[_host(event)] = ("unreachable", _res(event))
    return out


def revert(args: argparse.Namespace) -> int:
    extravars = {
        "pylivepatch_app": args.app,
        "pylivepatch_payload_name": args.name,
        "pylivepatch_state": "absent" if args.absent else "reverted",
    }
    run = run_playbook("revert", args, extravars)
    hosts = _per_host(run, "revert")
    if not hosts:
        raise _ansible_failure(run)
    rows, failed = [], []
    for name, (kind, res) in sorted(hosts.items()):
        if kind != "ok":
            failed.append(name)
            rows.append([name, kind, _message(res)])
            continue
        procs = res.get("processes", [])
        changed = [r for r in procs if r.get("before") != r.get("after")]
        text = f"changed in {_counted(changed)}" if changed else "no process had it applied"
        if res.get("installed", {}).get("before"):
            text += ", uninstalled"
        rows.append([name, "reverted" if res.get("changed") else "nothing to do", text])
    if args.json:
        doc: dict[str, Any] = {
            "ok": not failed,
            "action": "revert",
            "payload": args.name,
            "seconds": round(run.seconds, 1),
            "hosts": {r[0]: {"result": r[1], "detail": r[2]} for r in rows},
        }
        if failed:
            doc["error"] = {"code": "revert-failed", "errno": None,
                            "message": f"revert failed on {', '.join(failed)}"}  # fmt: skip
        print(json.dumps(doc))
    else:
        render.table(["HOST", "RESULT", "DETAIL"], rows)
        if failed:
            print(f"pylivepatch: revert-failed: {args.name} may still run on "
                  f"{', '.join(failed)}; see the table", file=sys.stderr)  # fmt: skip
    return EXIT_ERROR if failed else EXIT_OK


def host_state(res: dict[str, Any], name: str) -> tuple[str, str, str]:
    """(state, build id, processes) of payload ``name`` on a host, from livepatch_info."""
    procs = res.get("processes", [])
    installed = {i["name"]: i for i in res.get("installed", [])}
    states = [next((p for p in pr["payloads"] if p["name"] == name), None) for pr in procs]
    applied = sum(1 for s in states if s and s["state"] == "APPLIED")
    present = [s for s in states if s]
    build = (installed[name]["build_id"] if name in installed
             else present[0]["build_id"] if present else "")  # fmt: skip
    if not procs:
        state = "installed, no process" if name in installed else "no process"
    elif applied == len(procs):
        state = "applied" if name in installed else "applied, not installed"
    elif applied:
        state = f"partly applied ({applied} of {len(procs)})"
    elif name in installed:
        state = "installed, not applied"
    elif present:
        state = "reverted"
    else:
        state = "absent"
    return state, build, f"{applied}/{len(procs)}"


def status(args: argparse.Namespace) -> int:
    run = run_playbook("status", args, {"pylivepatch_app": args.app})
    hosts = _per_host(run, "status")
    if not hosts:
        raise _ansible_failure(run)
    rows: list[list[str]] = []
    doc: dict[str, Any] = {}
    for host, (kind, res) in sorted(hosts.items()):
        if kind != "ok":
            rows.append([host, kind, "", "", "", _message(res)])
            doc[host] = {"state": kind, "error": _message(res)}
            continue
        names = sorted({p["name"] for pr in res.get("processes", []) for p in pr["payloads"]}
                       | {i["name"] for i in res.get("installed", [])})  # fmt: skip
        if args.name:
            names = [args.name]
        doc[host] = {"processes": res.get("processes", []), "installed": res.get("installed", []),
                     "payloads": {}}  # fmt: skip
        if not names:
            rows.append([host, "nothing", "", "", f"0/{len(res.get('processes', []))}", ""])
        for name in names:
            state, build, applied = host_state(res, name)
            doc[host]["payloads"][name] = {"state": state, "build_id": build, "applied": applied}
            rows.append([host, state, name, build[:16], applied, ""])
    unreachable = [h for h, (kind, _) in hosts.items() if kind != "ok"]
    if args.json:
        print(json.dumps({"ok": not unreachable, "action": "status", "app": args.app,
                          "hosts": doc}))  # fmt: skip
    else:
        render.table(["HOST", "STATE", "PAYLOAD", "BUILD ID", "APPLIED", "ERROR"], rows)
    return EXIT_ERROR if unreachable else EXIT_OK
