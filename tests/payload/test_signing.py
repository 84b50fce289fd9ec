"""Signed payloads (spec §9): keygen, sign, verify, the policy at upload, tampering of
every kind refused as ``signature-invalid``, and fail-closed without ``cryptography``."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pylivepatch import LivepatchError
from pylivepatch.payload import archive, signing

pytest.importorskip("cryptography")

SRC = str(Path(__file__).resolve().parents[2] / "src")

FIX = """
    import pylivepatch as lp
    patch = lp.Patch("fix-sign", consistency="atomic")

    @patch.function("{m}signed:f")
    def f():
        return 2
"""


def cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pylivepatch", *args], cwd=cwd, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": SRC, **env}, timeout=120,
    )  # fmt: skip


@pytest.fixture
def signed(lab, monkeypatch):
    """A key pair, the payload unsigned and signed, and trusted keys set for uploads."""
    lab.module("signed", "def f():\n    return 1\n")
    (lab.root / "fix.lpz").write_bytes(lab.pack(FIX))
    out = cli("keygen", "-o", "ops.key", "--json", cwd=lab.root)
    assert out.returncode == 0, out.stderr
    kid = json.loads(out.stdout)["key"]
    out = cli("sign", "fix.lpz", "--key", "ops.key", "-o", "signed.lpz", cwd=lab.root)
    assert out.returncode == 0 and out.stdout == f"signed signed.lpz with key {kid}\n"
    monkeypatch.setenv(signing.TRUSTED_KEYS, str(lab.root / "ops.key.pub"))
    monkeypatch.delenv(signing.POLICY, raising=False)
    return lab, kid


def rewrite(data: bytes, change) -> bytes:
    """The archive with its members changed by ``change(dict)``, SIGNATURE kept."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    change(members)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return buf.getvalue()


def test_keygen_writes_a_private_key_only_its_owner_reads(signed):
    lab, kid = signed
    assert stat.S_IMODE((lab.root / "ops.key").stat().st_mode) == 0o600
    assert (lab.root / "ops.key.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    again = cli("keygen", "-o", "ops.key", cwd=lab.root)
    assert again.returncode == 1
    assert again.stderr.startswith("pylivepatch: exists: ") and "never overwrites" in again.stderr
    assert len(kid) == 16


def test_a_signed_payload_is_verified_at_upload_and_shown(signed):
    lab, kid = signed
    result = lab.engine.upload("fix-sign", (lab.root / "signed.lpz").read_bytes())
    assert result.state == "CHECKED"
    assert lab.engine.status("fix-sign").signature == f"verified {kid}"
    out = cli("verify", "signed.lpz", "--keys", "ops.key.pub", cwd=lab.root)
    assert out.returncode == 0 and out.stdout == f"signed.lpz: payload fix-sign: verified {kid}\n"
    out = cli("inspect", "signed.lpz", "--json", cwd=lab.root)
    assert json.loads(out.stdout)["signed"] is True


@pytest.mark.parametrize(
    "tamper",
    ["manifest", "source", "added file", "removed file", "signature", "other key"],
)
def test_any_tampering_is_signature_invalid(signed, tamper):
    lab, _ = signed
    data = (lab.root / "signed.lpz").read_bytes()
    if tamper == "manifest":

        def change(m):
            doc = json.loads(m["manifest.json"])
            doc["metadata"]["note"] = "x"
            m["manifest.json"] = json.dumps(doc).encode()
    elif tamper == "source":

        def change(m):
            m["payload/__init__.py"] = m["payload/__init__.py"].replace(b"return 2", b"return 3")
    elif tamper == "added file":

        def change(m):
            m["payload/extra.py"] = b"print('hi')\n"
    elif tamper == "removed file":
        p = archive.read(data)  # a signed payload with one more file, then that file removed
        files = {**p.files, "payload/helper.py": b"X = 1\n"}
        man = archive.seal(p.manifest.to_json(), files)
        key = signing.load_private(lab.root / "ops.key")
        data = archive.write(man, files, signing.sign(archive.members(man, files), key))

        def change(m):
            del m["payload/helper.py"]
    elif tamper == "signature":

        def change(m):
            doc = json.loads(m["SIGNATURE"])
            sig = bytearray(__import__("base64").b64decode(doc["sig"]))
            sig[0] ^= 1
            doc["sig"] = __import__("base64").b64encode(bytes(sig)).decode()
            m["SIGNATURE"] = json.dumps(doc).encode()
    else:
        other = cli("keygen", "-o", "other.key", cwd=lab.root)
        assert other.returncode == 0
        assert (
            cli("sign", "fix.lpz", "--key", "other.key", "-o", "other.lpz", cwd=lab.root).returncode
            == 0
        )
        data = (lab.root / "other.lpz").read_bytes()

        def change(m):
            pass

    before = [s.name for s in lab.engine.list()]
    with pytest.raises(LivepatchError) as err:
        lab.engine.upload("fix-sign", rewrite(data, change))
    assert err.value.code == "signature-invalid", err.value.message
    assert "fix-sign" in err.value.message
    assert [s.name for s in lab.engine.list()] == before, "nothing was uploaded"


def test_policy_require_refuses_unsigned_and_no_keys_accepts_unsigned(signed, monkeypatch):
    lab, kid = signed
    unsigned = (lab.root / "fix.lpz").read_bytes()
    monkeypatch.setenv(signing.POLICY, "require")
    with pytest.raises(LivepatchError) as err:
        lab.engine.upload("fix-sign", unsigned)
    assert err.value.code == "signature-required"
    assert err.value.message.startswith("payload fix-sign is not signed and the policy requires")
    monkeypatch.delenv(signing.POLICY)
    monkeypatch.delenv(signing.TRUSTED_KEYS)
    lab.engine.upload("fix-sign", unsigned)
    assert lab.engine.status("fix-sign").signature == "unsigned"
    lab.engine.unload("fix-sign")
    lab.engine.upload("fix-sign", (lab.root / "signed.lpz").read_bytes())
    assert lab.engine.status("fix-sign").signature == (
        f"signed by {kid} (not verified: no trusted keys)"
    )


def test_pack_and_build_sign_too(signed):
    lab, kid = signed
    lab.write("fix2.py", FIX.replace("{m}", lab.prefix))
    out = cli("pack", "fix2.py", "-o", "packed.lpz", "--sign", "ops.key", cwd=lab.root,
              PYTHONPATH=os.pathsep.join([SRC, str(lab.root)]))  # fmt: skip
    assert out.returncode == 0, out.stderr
    out = cli("verify", "packed.lpz", "--keys", "ops.key.pub", cwd=lab.root)
    assert out.stdout.endswith(f"verified {kid}\n")
    for side, body in (("old", "return 1"), ("new", "return 5")):
        (lab.root / side / "bpkg").mkdir(parents=True)
        (lab.root / side / "bpkg" / "__init__.py").write_text(f"def g():\n    {body}\n")
    out = cli("build", "old", "new", "-o", "built.lpz", "--sign", "ops.key", cwd=lab.root)
    assert out.returncode == 0, out.stderr
    out = cli("verify", "built.lpz", "--keys", "ops.key.pub", cwd=lab.root)
    assert out.stdout == f"built.lpz: payload built: verified {kid}\n"


def test_fail_closed_without_cryptography(signed):
    """With trusted keys configured and no way to verify, nothing is accepted."""
    lab, _ = signed
    blocker = lab.root / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['cryptography'] = None\n")
    probe = (
        "import pylivepatch as lp, sys\n"
        "try:\n"
        f"    lp.engine().upload('fix-sign', open({str(lab.root / 'fix.lpz')!r}, 'rb').read())\n"
        "except lp.LivepatchError as e:\n"
        "    print(e.code, e.message)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=lab.root,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(blocker), SRC, str(lab.root)])),
    )  # fmt: skip
    assert out.stdout.startswith("signature-invalid upload fix-sign: cannot verify or make "
                                 "signatures: the cryptography package is not installed"), out  # fmt: skip


def test_a_tampered_payload_through_load_is_a_signature_error_and_recorded(signed, monkeypatch):
    """Issue 21 item 6: ``load`` of a tampered signed payload under ``require`` is
    ``signature-invalid`` (before, ``invalid-payload``: its name was read without the
    policy), recorded as a refused ``load`` in the history the audit log follows."""
    lab, _ = signed
    monkeypatch.setenv(signing.POLICY, "require")
    data = (lab.root / "signed.lpz").read_bytes()

    def change(m):
        m["payload/__init__.py"] = m["payload/__init__.py"].replace(b"return 2", b"return 3")

    since = lab.mark()
    with pytest.raises(LivepatchError) as err:
        lab.engine.load(rewrite(data, change), force=True, consistency="immediate")
    assert err.value.code == "signature-invalid", err.value.message
    (refused,) = [ev for ev in lab.engine.history(since) if ev.action == "load"]
    assert refused.kind == "refused" and refused.detail["error"] == "signature-invalid"
    assert refused.detail["mode"] == "immediate" and refused.detail["flags"] == ["force"]
    assert [s.name for s in lab.engine.list()] == []
