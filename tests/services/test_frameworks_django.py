"""Django under gunicorn without ``--preload`` (the master never imports the project),
under ``pylivepatch run``, patched app-wide with a payload that ``pylivepatch build``
makes from a real Django security release pair: 4.2.20 -> 4.2.21 (CVE-2025-32873:
``strip_tags`` on long unclosed tags; the fix is function-level, plus a new module
name). Under HTTP load from client threads: after the load every worker refuses the
crafted input (``SuspiciousOperation``), a worker killed and respawned by the master
comes back patched (the payload waits in the master for Django's modules and is
applied in the new worker when it imports them), the revert brings the old behaviour
back everywhere, and no request fails but those the killed worker held.

The two wheels come from PyPI (``pip download``): without network access the test is
skipped, and says so. docs/frameworks.md, "Django under gunicorn"."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from test_services import (
    GUNICORN,
    SRC,
    Load,
    agents,
    cli,
    free_port,
    serving,
    settle,
    stop,
    wait_until,
)

pytest.importorskip("asgiref")  # Django's dependencies (the frameworks extra)
pytest.importorskip("sqlparse")
pytestmark = [
    pytest.mark.system,  # starts servers, gdb or namespaces: not in the fast lane
    pytest.mark.skipif(GUNICORN is None, reason="gunicorn is not installed"),
]

OLD, NEW = "4.2.20", "4.2.21"

SETTINGS = """
SECRET_KEY = "test"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "djurls"
INSTALLED_APPS = []
MIDDLEWARE = []
DATABASES = {}
USE_TZ = True
"""

URLS = """
import os

from django.core.exceptions import SuspiciousOperation
from django.http import HttpResponse
from django.urls import path
from django.utils.html import strip_tags

CRAFTED = "<a" + "<" * 60 + "x" * 1000  # an open tag never closed, 60 "<" deep


def view(request):
    try:
        strip_tags(CRAFTED)
        verdict = "v1"  # 4.2.20: strips it
    except SuspiciousOperation:
        verdict = "v2"  # 4.2.21: refuses it
    return HttpResponse(f"{verdict} {os.getpid()}", content_type="text/plain")


urlpatterns = [path("", view)]
"""

WSGI = """
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djsettings")

from django.core.wsgi import get_wsgi_application

application = get_wsgi_application()
"""


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict[str, Path]:
    where = tmp_path_factory.mktemp("django-wheels")
    for version in (OLD, NEW):
        got = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
             "-q", "-d", str(where), f"django=={version}"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if got.returncode != 0:
            pytest.skip(f"cannot download Django {version} from PyPI: {got.stderr.strip()[-300:]}")
    found = {w.name.split("-")[1]: w for w in where.glob("*.whl")}
    return {v: found[v] for v in (OLD, NEW)}


def test_django_release_pair_under_gunicorn_without_preload(lab, wheels):
    site = lab.root / "site"
    with zipfile.ZipFile(wheels[OLD]) as whl:  # the running release, first on the path
        whl.extractall(site)
    (lab.root / "djsettings.py").write_text(SETTINGS)
    (lab.root / "djurls.py").write_text(URLS)
    (lab.root / "djwsgi.py").write_text(WSGI)
    build = cli("build", str(wheels[OLD]), str(wheels[NEW]), "-o", "fix.lpz", "--name",
                "django-fix", cwd=lab.root)  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    port, app = free_port(), f"dj-{lab.prefix}".rstrip("_")
    server = subprocess.Popen(
        [sys.executable, "-m", "pylivepatch", "run", "--app", app, "--", str(GUNICORN),
         "-w", "3", "-b", f"127.0.0.1:{port}", "--chdir", str(lab.root), "djwsgi"],
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, str(site), str(lab.root)])),
        cwd=lab.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    load = None
    try:
        wait_until(lambda: len(agents(lab, app)) == 4, "the master and 3 workers")
        wait_until(lambda: serving(port), "gunicorn listening")
        master = server.pid
        load = Load(port, threads=4)
        wait_until(lambda: len(load.workers_saying("v1", 0)) == 3, "answers from 3 workers")
        workers = load.workers_saying("v1", 0)
        out = cli("load", "fix.lpz", "--app", app, "--json", cwd=lab.root)
        assert out.returncode == 0, out.stdout + out.stderr
        results = json.loads(out.stdout)["processes"]
        # the master never imported Django: the payload waits there for its modules
        assert results[str(master)].startswith("applied; waits for the import"), results
        assert all(results[str(w)] == "applied" for w in workers), results
        settle(load, "v2", workers, "after load")
        # a worker killed: the master forks a new one, which imports Django, patched there
        victim = max(workers)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: len(agents(lab, app)) == 4 and victim not in agents(lab, app),
            "the killed worker's replacement",
        )
        respawned_at = time.monotonic()
        (fresh,) = set(agents(lab, app)) - workers - {master}
        workers = (workers - {victim}) | {fresh}
        settle(load, "v2", workers, "after the respawn")
        assert agents(lab, app)[fresh] == ["django-fix"]
        out = cli("revert", "django-fix", "--app", app, cwd=lab.root)
        assert out.returncode == 0, out.stdout + out.stderr
        settle(load, "v1", workers, "after revert")
        load.close()
        lost = [f for t, f in load.failures if not killed_at <= t <= respawned_at + 10.5]
        assert lost == [], f"{len(lost)} requests failed outside the kill, e.g. {lost[:3]}"
    finally:
        if load is not None:
            load.close()
        stop(server)
