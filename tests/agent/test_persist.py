"""Persistence and the audit log (spec §9): payloads installed for an app are applied
by every new process of that app at start, before their targets are imported; every
action is a JSON line in the app's audit log."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

from pylivepatch import Client
from pylivepatch.agent import store

SRC = str(Path(__file__).resolve().parents[2] / "src")

SHOP = "def price(x):\n    return x * 2\n"

FIX = """
    import pylivepatch as lp
    patch = lp.Patch("fix-price", consistency="atomic")

    @patch.function("{m}shop:price")
    def price(x):
        return x * 3
"""

# The program imports its target itself, after start-up: the installed payload must
# already be waiting for it. It reports whether the module was imported before main.
PROGRAM = """
import sys
before = {module!r} in sys.modules
import {module} as shop
print(before, shop.price(2), flush=True)
for line in sys.stdin:
    print(shop.price(2), flush=True)
"""


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pylivepatch", *args], cwd=cwd, capture_output=True, text=True,
        env=dict(os.environ, PYTHONPATH=SRC), timeout=120,
    )  # fmt: skip


def run_app(lab, app: str, program: str, *first_path: str) -> subprocess.Popen[str]:
    """``first_path`` comes before the lab's directory (and is the working directory:
    ``python -c`` puts that first on ``sys.path``)."""
    path = os.pathsep.join([SRC, *first_path, str(lab.root)])
    return subprocess.Popen(
        [sys.executable, "-m", "pylivepatch", "run", "--app", app, "--", sys.executable, "-c",
         program],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=path), cwd=first_path[0] if first_path else lab.root,
    )  # fmt: skip


def finish(proc: subprocess.Popen[str]) -> str:
    _, err = proc.communicate("", timeout=30)
    return err


def test_install_list_uninstall_keep_private_files(lab):
    lab.module("shop", SHOP)
    (lab.root / "fix.lpz").write_bytes(lab.pack(FIX))
    app = f"shop-{lab.prefix}"
    out = cli("install", "fix.lpz", "--app", app, "--json", cwd=lab.root)
    assert out.returncode == 0, out.stderr
    item = json.loads(out.stdout)
    assert (item["app"], item["seq"], item["name"]) == (app, 1, "fix-price")
    path = Path(item["file"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for directory in (path.parent, path.parent.parent, store.state_dir()):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    again = cli("install", "fix.lpz", "--app", app, cwd=lab.root)
    assert again.returncode == 1
    assert again.stderr == (
        f"pylivepatch: exists: payload fix-price is already installed for app {app}; "
        f"uninstall it first (pylivepatch uninstall fix-price --app {app})\n"
    )
    listed = json.loads(cli("list", "--installed", "--app", app, "--json", cwd=lab.root).stdout)
    assert [(i["seq"], i["name"], i["build_id"]) for i in listed] == [
        (1, "fix-price", item["build_id"])
    ]
    out = cli("uninstall", "fix-price", "--app", app, cwd=lab.root)
    assert out.returncode == 0 and out.stdout.startswith(f"uninstalled fix-price from app {app}")
    assert not path.exists()
    out = cli("uninstall", "fix-price", "--app", app, cwd=lab.root)
    assert out.returncode == 1 and out.stderr.startswith(
        f"pylivepatch: not-found: no payload named fix-price is installed for app {app}"
    )
    out = cli("install", "fix.lpz", "--app", "../evil", cwd=lab.root)
    assert out.returncode == 1 and "app name '../evil' is not valid" in out.stderr


def test_a_new_process_applies_installed_payloads_before_its_targets_are_imported(lab):
    lab.module("shop", SHOP)
    app = f"boot-{lab.prefix}"
    (lab.root / "fix.lpz").write_bytes(lab.pack(FIX))
    assert cli("install", "fix.lpz", "--app", app, cwd=lab.root).returncode == 0
    proc = run_app(lab, app, PROGRAM.format(module=lab.name("shop")))
    try:
        assert proc.stdout.readline().split() == ["False", "6"], "patched at its first call"
        (st,) = Client(proc.pid).list()
        assert (st.name, st.state) == ("fix-price", "APPLIED")
    finally:
        assert finish(proc) == ""
    records = [r for r in store.read_audit(app) if r["pid"] == proc.pid]
    assert [(r["action"], r["event"], r["result"], r["peer"]["via"]) for r in records] == [
        ("upload", "finished", "ok", "start"),
        ("apply", "finished", "ok", "start"),
        ("apply", "late-apply", "ok", "import"),
    ]
    assert {r["build_id"] for r in records} == {st.build_id}
    assert records[-1]["module"] == lab.name("shop")


def test_installed_payloads_apply_in_order_and_a_bad_one_does_not_stop_the_program(lab):
    lab.module("shop", SHOP)
    app = f"order-{lab.prefix}"
    first = lab.pack(FIX)
    second = lab.pack(
        """
        import pylivepatch as lp
        patch = lp.Patch("fix-price-2", consistency="atomic")

        @patch.function("{m}shop:price")
        def price(x):
            return x * 4
        """
    )
    (lab.root / "a.lpz").write_bytes(first)
    (lab.root / "b.lpz").write_bytes(second)
    for f in ("a.lpz", "b.lpz"):
        assert cli("install", f, "--app", app, cwd=lab.root).returncode == 0
    # a third one depends on a payload this program never had: refused, the rest stays
    (lab.root / "c.lpz").write_bytes(
        lab.pack(
            """
            import pylivepatch as lp
            patch = lp.Patch("fix-other", consistency="atomic", depends="0" * 64)

            @patch.function("{m}shop:price")
            def price(x):
                return x + 2
            """
        )
    )
    assert cli("install", "c.lpz", "--app", app, cwd=lab.root).returncode == 0
    program = PROGRAM.format(module=lab.name("shop"))
    proc = run_app(lab, app, program)
    try:
        assert proc.stdout.readline().split() == ["False", "8"], "the later payload on top"
        states = {s.name: s.state for s in Client(proc.pid).list()}
        assert states == {"fix-price": "APPLIED", "fix-price-2": "APPLIED"}
    finally:
        err = finish(proc)
    assert err.startswith(
        f"pylivepatch: installed payload fix-other of app {app} not applied at start: "
        "dependency-mismatch: "
    ), err
    assert err.count("\n") == 1
    refused = [r for r in store.read_audit(app) if r["pid"] == proc.pid and r["result"] != "ok"]
    assert [(r["payload"], r["result"]) for r in refused] == [
        ("fix-other", "dependency-mismatch")
    ], refused


def test_installed_payloads_writable_by_others_are_refused(lab):
    lab.module("shop", SHOP)
    app = f"unsafe-{lab.prefix}"
    (lab.root / "fix.lpz").write_bytes(lab.pack(FIX))
    assert cli("install", "fix.lpz", "--app", app, cwd=lab.root).returncode == 0
    directory = store.app_dir(app) / "installed"
    directory.chmod(0o777)
    proc = run_app(lab, app, PROGRAM.format(module=lab.name("shop")))
    try:
        assert proc.stdout.readline().split() == ["False", "4"], "the program runs, unpatched"
    finally:
        err = finish(proc)
    assert err.startswith(
        f"pylivepatch: installed payloads of app {app} not applied at start: permission-denied: "
        f"{directory} must belong to uid"
    ), err
    assert "writable by others (it has uid" in err


def test_a_spawned_child_applies_installed_payloads_too(lab):
    lab.module("shop", SHOP)
    app = f"spawn-{lab.prefix}"
    (lab.root / "fix.lpz").write_bytes(lab.pack(FIX))
    assert cli("install", "fix.lpz", "--app", app, cwd=lab.root).returncode == 0
    (lab.root / "spawner.py").write_text(
        textwrap.dedent(
            f"""
            import multiprocessing, os

            def child(q):
                import {lab.name("shop")} as shop
                q.put((os.getpid(), shop.price(2)))

            if __name__ == "__main__":
                ctx = multiprocessing.get_context("spawn")
                q = ctx.Queue()
                p = ctx.Process(target=child, args=(q,))
                p.start()
                print(*q.get(timeout=60), flush=True)
                p.join(60)
            """
        )
    )
    out = subprocess.run(
        [sys.executable, "-m", "pylivepatch", "run", "--app", app, "--", sys.executable,
         "spawner.py"],
        capture_output=True, text=True, cwd=lab.root, timeout=120,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, str(lab.root)])),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    pid, price = out.stdout.split()
    assert price == "6"
    starts = [r for r in store.read_audit(app) if r["pid"] == int(pid)]
    assert ("apply", "start") in {(r["action"], r["peer"]["via"]) for r in starts}


def test_run_chains_the_sitecustomize_it_shadows(lab):
    own = lab.root / "own"
    own.mkdir()
    (own / "sitecustomize.py").write_text("import builtins\nbuiltins.OWN_SITE = 'ran'\n")
    program = "import builtins, sys, pylivepatch.agent.server as s; print(builtins.OWN_SITE, s._agent is not None, sys.modules['sitecustomize'].__file__)"
    out = subprocess.run(
        [sys.executable, "-m", "pylivepatch", "run", "--", sys.executable, "-c", program],
        capture_output=True, text=True, cwd=lab.root, timeout=60,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, str(own)])),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ran", "True", str(own / "sitecustomize.py")]


def test_every_action_is_audited_with_its_peer(lab):
    lab.module("shop", SHOP)
    app = f"audit-{lab.prefix}"
    proc = run_app(lab, app, PROGRAM.format(module=lab.name("shop")))
    try:
        assert proc.stdout.readline().split() == ["False", "4"]
        (lab.root / "fix.lpz").write_bytes(lab.pack(FIX))
        assert cli("load", "fix.lpz", "-p", str(proc.pid), cwd=lab.root).returncode == 0
        bad = cli("apply", "nope", "-p", str(proc.pid), cwd=lab.root)
        assert bad.returncode == 1
        assert cli("revert", "fix-price", "-p", str(proc.pid), cwd=lab.root).returncode == 0
    finally:
        finish(proc)
    records = [r for r in store.read_audit(app) if r["pid"] == proc.pid]
    assert [(r["action"], r["payload"], r["result"]) for r in records] == [
        ("upload", "fix-price", "ok"),
        ("apply", "fix-price", "ok"),
        ("apply", "nope", "not-found"),
        ("revert", "fix-price", "ok"),
    ]
    for r in records:
        assert r["peer"]["via"] == "socket" and r["peer"]["uid"] == os.getuid()
        assert r["peer"]["pid"] != proc.pid  # the CLI process
        assert r["app"] == app and isinstance(r["duration_ms"], float)
    apply = records[1]
    assert len(apply["build_id"]) == 64 and apply["pause_us"] > 0
    text = cli("log", "--app", app, cwd=lab.root)
    assert text.returncode == 0
    rows = [ln for ln in text.stdout.splitlines() if ln.strip() and set(ln.strip()) != {"─"}]
    lines = [ln.split() for ln in rows]  # with rich or plain tables alike
    assert lines[0][:6] == ["TIME", "APP", "PID", "PEER", "ACTION", "PAYLOAD"]
    peerless = [ln[7:10] for ln in lines[1:]]  # the peer is 4 words: uid U pid P
    assert peerless == [
        ["upload", "fix-price", apply["build_id"][:12]],
        ["apply", "fix-price", apply["build_id"][:12]],
        ["apply", "nope", "-"],
        ["revert", "fix-price", apply["build_id"][:12]],
    ]


def test_load_after_install_leaves_processes_that_applied_it_at_start_alone(lab):
    """Install first, then load: a process started in between already has the payload
    (no action needed), and if another process refuses, the rollback takes back only
    what this load did."""
    lab.module("shop", SHOP)
    app = f"both-{lab.prefix}"
    program = PROGRAM.format(module=lab.name("shop"))
    early = run_app(lab, app, program)
    assert early.stdout.readline().split() == ["False", "4"]
    (lab.root / "fix.lpz").write_bytes(lab.pack(FIX))
    assert cli("install", "fix.lpz", "--app", app, cwd=lab.root).returncode == 0
    late = run_app(lab, app, program)
    assert late.stdout.readline().split() == ["False", "6"]
    procs = [early, late]
    try:
        out = cli("load", "fix.lpz", "--app", app, "--json", cwd=lab.root)
        assert out.returncode == 0, out.stdout + out.stderr
        assert json.loads(out.stdout)["processes"] == {
            str(early.pid): "applied",
            str(late.pid): "fix-price is already APPLIED: no action needed",
        }
        assert cli("revert", "fix-price", "-p", str(early.pid), cwd=lab.root).returncode == 0
        assert cli("unload", "fix-price", "-p", str(early.pid), cwd=lab.root).returncode == 0
        # a third process runs other code under the module's name: the load is refused
        odd_dir = lab.root / "odd"
        odd_dir.mkdir()
        (odd_dir / f"{lab.name('shop')}.py").write_text("def price(x):\n    return x * 2 + 0\n")
        assert cli("uninstall", "fix-price", "--app", app, cwd=lab.root).returncode == 0
        odd = run_app(lab, app, program, str(odd_dir))
        procs.append(odd)
        assert odd.stdout.readline().split() == ["False", "4"]
        out = cli("load", "fix.lpz", "--app", app, "--json", cwd=lab.root)
        assert out.returncode == 1
        report = json.loads(out.stdout)["processes"]
        assert report[str(late.pid)] == "already uploaded"
        assert report[str(odd.pid)].startswith("dependency-mismatch: ")
        for proc, price in ((early, "4"), (late, "6"), (odd, "4")):
            proc.stdin.write("x\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == price
        assert [s.name for s in Client(early.pid).list()] == [], "the rollback unloaded it"
        assert [(s.name, s.state) for s in Client(late.pid).list()] == [("fix-price", "APPLIED")]
    finally:
        for proc in procs:
            finish(proc)


def test_the_state_and_audit_paths_follow_the_environment(tmp_path, monkeypatch):
    """The paths are cached (parsing them again for every audit line churned CPython's
    table of interned strings: a step of resident memory found by the soak), but by
    what decides them: a changed state directory or app gives new paths."""
    monkeypatch.setenv("PYLIVEPATCH_STATE_DIR", str(tmp_path / "one"))
    first = store.audit_path("web")
    assert first == tmp_path / "one" / "apps" / "web" / store.AUDIT_FILE
    assert store.audit_path("web") is first, "the same path object: nothing parsed again"
    assert store.audit_path("api") == tmp_path / "one" / "apps" / "api" / store.AUDIT_FILE
    monkeypatch.setenv("PYLIVEPATCH_STATE_DIR", str(tmp_path / "two"))
    assert store.audit_path("web") == tmp_path / "two" / "apps" / "web" / store.AUDIT_FILE
    store.append_audit("web", {"action": "check"})
    assert [r["action"] for r in store.read_audit("web")] == ["check"]
    monkeypatch.delenv("PYLIVEPATCH_STATE_DIR")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert store.state_dir() == tmp_path / "xdg" / "pylivepatch"
