"""Run the builder on real release pairs of PyPI packages and check the payloads.

    python corpus/run.py [--only NAME[==OLD]] [--fast] [--work DIR] [--out docs/corpus.md]

For every pair of ``corpus/pairs.tsv`` (releases where the newer one fixes a security
bug): download both sdists, make a virtualenv with the OLD release and its test
dependencies installed, build the payload OLD -> NEW with ``pylivepatch build``, and:

- if it builds: run the acceptance check (a probe script, or the NEW release's tests
  that the fix added) and the NEW release's own test suite against the OLD installed
  release, once with the payload applied via ``pylivepatch test`` and once without;
- if it is refused: record the reasons, and whether refusing was expected.

Results go to a JSON file and a Markdown table (``--out``). ``--fast`` runs only the
pairs CI runs (small, quick to install). Every run is bounded by a timeout; the OLD
side of a denial-of-service check is expected to be slow and is cut at the timeout.

Batches run side by side each write ``--json``; ``--merge JSON... --keep docs/corpus.md
--out docs/corpus.md`` then writes the page from them, keeping the rows, sections and
hand-written paragraphs of the page for pairs that have no results at hand.

The full corpus, as docs/corpus.md shows it (about an hour on two cores; downloads and
virtualenvs are kept under .corpus/, which git ignores, and reused):

    python corpus/run.py --out docs/corpus.md --json .corpus/results.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SRC = ROOT / "src"
#: what CI runs (``--fast``): quick installs, quick suites
FAST = {"tqdm==4.66.2", "idna==3.6", "urllib3==1.26.18", "pyjwt==2.10.0", "mistune==2.0.2"}
CONFIG = ("pyproject.toml", "setup.cfg", "tox.ini", "pytest.ini", "conftest.py")
PACKAGE_DIRS = {"python-multipart": ["python_multipart", "multipart"]}
#: per pair (NAME==OLD): build options (a fix whose state needs the author's hooks) and a
#: probe run on objects made before the payload is applied (LPZ names the payload)
PAIR_OPTIONS: dict[str, dict[str, object]] = {
    "h11==0.15.0": {
        "build": ["--allow", "instance-state", "--hooks", str(HERE / "hooks" / "h11_0160.py")],
        "old_objects": "probes/old_objects_h11_0160.py",
        # h11/tests import the package relatively (`from .._events import ...`): the
        # suite runs as part of a copy of the OLD package, NEW's tests laid over it
        "tests_in_old_package": "h11",
    },
    "starlette==0.47.1": {
        "build": [
            "--allow", "instance-state", "--hooks", str(HERE / "hooks" / "starlette_0472.py"),
        ],
        "old_objects": "probes/old_objects_starlette_0472.py",
    },
    # 2.3.2 raises its floor to werkzeug 2.3.3 (refused as `requirements`); the pair's
    # environment installs werkzeug 2.3.3 first, as an author upgrading it would
    "flask==2.3.1": {"build": ["--allow", "requirements"]},
    "werkzeug==2.2.2": {
        "build": [
            "--allow", "dataclass-fields", "--allow", "computed-data",
            "--hooks", str(HERE / "hooks" / "werkzeug_223.py"),
        ],
        "old_objects": "probes/old_objects_werkzeug_223.py",
    },
}  # fmt: skip


@dataclass
class Outcome:
    package: str
    old: str
    new: str
    expected: str
    built: str = ""  # built | refused | error
    reasons: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # the builder's (ignored changes...)
    build_seconds: float = 0.0
    acceptance_with: str = ""
    acceptance_without: str = ""
    suite_with: dict[str, int] = field(default_factory=dict)
    suite_without: dict[str, int] = field(default_factory=dict)
    failing_with: list[str] = field(default_factory=list)  # test ids
    failing_without: list[str] = field(default_factory=list)
    old_objects: str = ""  # the probe on objects made before the payload: its last line
    suite_late: dict[str, int] = field(default_factory=dict)  # payload applied after import
    failing_late: list[str] = field(default_factory=list)
    build_options: list[str] = field(default_factory=list)
    verdict: str = ""
    notes: list[str] = field(default_factory=list)


MEMORY_CAP = 8 * 1024**3  # bytes of address space for each command: an OLD release's
# denial-of-service test grows without bound (the corpus README asks for a cap)


def _cap_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def sh(
    cmd: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in a process group of its own, so that a timeout stops every
    process it started (``pylivepatch test`` runs the suite as a child)."""
    proc = subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, **(env or {})), preexec_fn=_cap_memory, start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return subprocess.CompletedProcess(cmd, 124, out, f"timed out after {timeout:.0f}s")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def failing(text: str) -> list[str]:
    """Test ids pytest's -rfE summary lists as FAILED or ERROR."""
    return sorted({m for m in re.findall(r"^(?:FAILED|ERROR) (\S+)", text, re.M)})


def summary(text: str) -> dict[str, int]:
    """pytest's closing counts."""
    counts: dict[str, int] = {}
    lines = [ln for ln in text.splitlines() if re.search(r"\d+ (passed|failed|error)", ln)]
    if lines:
        for n, word in re.findall(
            r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)", lines[-1]
        ):
            counts["error" if word.startswith("error") else word] = int(n)
    return counts


def _has_pytest_config(run: Path) -> bool:
    marks = {"pytest.ini": "", "pyproject.toml": "[tool.pytest.ini_options]",
             "tox.ini": "[pytest]", "setup.cfg": "[tool:pytest]"}  # fmt: skip
    return any((run / f).is_file() and mark in (run / f).read_text("utf-8", "replace")
               for f, mark in marks.items())  # fmt: skip


#: how long one run of a pair's test suite may take (a suite that hangs is run once more)
SUITE_TIMEOUT = 1800.0
#: the same for the quick pairs CI runs (``--fast``): their suites take under a minute
FAST_SUITE_TIMEOUT = 300.0


class Pair:
    suite_timeout = SUITE_TIMEOUT

    def __init__(self, row: dict[str, str], work: Path, python: str) -> None:
        self.row = row
        self.name, self.old, self.new = row["package"], row["old"], row["new"]
        self.dir = work / f"{self.name}-{self.old}-{self.new}"
        self.python = python
        self.out = Outcome(self.name, self.old, self.new, row["expected"])
        self.options = PAIR_OPTIONS.get(f"{self.name}=={self.old}", {})

    @property
    def venv_python(self) -> str:
        return str(self.dir / "venv" / "bin" / "python")

    def log(self, msg: str) -> None:
        print(f"[{self.name} {self.old}->{self.new}] {msg}", flush=True)

    def run(self) -> Outcome:
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            self.prepare()
            self.build()
            if self.out.built == "built":
                self.install_test_deps()
                self.check()
        except RuntimeError as exc:
            self.out.built = self.out.built or "error"
            self.out.notes.append(str(exc))
        self.out.verdict = self.verdict()
        self.log(f"verdict: {self.out.verdict}")
        return self.out

    def prepare(self) -> None:
        if not Path(self.venv_python).exists():
            r = sh([self.python, "-m", "venv", str(self.dir / "venv")], self.dir, 300)
            if r.returncode:
                raise RuntimeError(f"venv: {r.stderr.strip()[-300:]}")
        pip = self.pip = [self.venv_python, "-m", "pip", "-q", "--disable-pip-version-check"]
        self.env = {"TORNADO_EXTENSION": "0"}
        for version in (self.old, self.new):
            if not list(self.dir.glob(f"*-{version}.tar.gz")) and not list(
                self.dir.glob(f"*-{version}.zip")
            ):
                r = sh([*pip, "download", "--no-deps", "--no-binary", ":all:",
                        f"{self.name}=={version}", "-d", str(self.dir)], self.dir, 600)  # fmt: skip
                if r.returncode:
                    raise RuntimeError(f"download {version}: {r.stderr.strip()[-300:]}")
        self.sdists = {v: self._sdist(v) for v in (self.old, self.new)}
        self.trees = {v: self._unpack(self.sdists[v]) for v in (self.old, self.new)}
        self.log("installing the old release")
        r = sh([*self.pip, "install", str(self.sdists[self.old])], self.dir, 1200, self.env)
        if r.returncode:
            raise RuntimeError(f"install: {r.stderr.strip()[-500:]}")

    def install_test_deps(self) -> None:
        deps = self.row.get("test_deps", "").split()
        deps = [str(self.trees[self.new] / d) if d.startswith("requirements") else d for d in deps]
        command = self.row["test_command"]
        if (
            "pytest" in command
            and not any(d.startswith("pytest") for d in deps)
            and "requirements" not in " ".join(deps)
        ):
            deps.append("pytest")  # the pair lists none: its suite still runs with pytest
        if "--timeout" in command and not any(d.startswith("pytest-timeout") for d in deps):
            deps.append("pytest-timeout")
        self.log("installing the test dependencies")
        if deps:
            r = sh([*self.pip, "install", *deps], self.dir, 1200, self.env)
            if r.returncode:
                raise RuntimeError(f"install test dependencies: {r.stderr.strip()[-500:]}")
        # a test requirement may have pulled in another version of the package itself
        r = sh([*self.pip, "install", "--no-deps", "--force-reinstall", str(self.sdists[self.old])],
               self.dir, 600, self.env)  # fmt: skip
        if r.returncode:
            raise RuntimeError(f"install old: {r.stderr.strip()[-500:]}")

    def _sdist(self, version: str) -> Path:
        for pattern in (f"*-{version}.tar.gz", f"*-{version}.zip"):
            found = sorted(self.dir.glob(pattern))
            if found:
                return found[0]
        raise RuntimeError(f"no sdist for {version}")

    def _unpack(self, sdist: Path) -> Path:
        dest = self.dir / sdist.name.replace(".tar.gz", "").replace(".zip", "")
        if not dest.exists():
            with tarfile.open(sdist) as tf:
                if sys.version_info >= (3, 12):
                    tf.extractall(self.dir, filter="data")
                else:  # an sdist from PyPI, named on our own list
                    tf.extractall(self.dir)  # noqa: S202
        return dest

    def build(self) -> None:
        env = {"PYTHONPATH": str(SRC), "TORNADO_EXTENSION": "0"}
        extra = [str(a) for a in self.options.get("build", [])]  # type: ignore[attr-defined]
        self.out.build_options = [a.replace(str(ROOT) + "/", "") for a in extra]
        t0 = time.perf_counter()
        r = sh(
            [self.venv_python, "-m", "pylivepatch", "build", str(self.sdists[self.old]),
             str(self.sdists[self.new]), "-o", str(self.dir / "fix.lpz"), "--json",
             "--name", f"{self.name}-{self.new}-fix", "--metadata", f"advisory={self.row['advisory']}",
             *extra],
            self.dir, 600, env,
        )  # fmt: skip
        self.out.build_seconds = round(time.perf_counter() - t0, 2)
        try:
            report = json.loads(r.stdout)
        except ValueError:
            self.out.built = "error"
            raise RuntimeError(f"build: {r.stderr.strip()[-500:]}") from None
        if "changes" not in report:
            self.out.built = "error"
            raise RuntimeError(f"build: {report.get('error')}")
        self.out.changes = [f"{c['kind']} {c['target']}" for c in report["changes"]]
        self.out.warnings = list(report.get("warnings", []))
        self.out.reasons = [
            f"{x['file']}:{x['line']}: {x['kind']}: {x['target']}: {x['reason']}"
            for x in report["refusals"]
        ]
        self.out.built = "built" if r.returncode == 0 else "refused"
        self.log(
            f"{self.out.built} in {self.out.build_seconds}s: {len(self.out.changes)} changes, {len(self.out.reasons)} refusals"
        )

    def check(self) -> None:
        run = self.dir / "run"
        if run.exists():
            shutil.rmtree(run)
        run.mkdir()
        new_tree = self.trees[self.new]
        for d in self.row["test_dirs"].split():
            if (new_tree / d).exists():
                shutil.copytree(new_tree / d, run / d)
        for f in CONFIG:
            if (new_tree / f).is_file():
                shutil.copy(new_tree / f, run / f)
        for probe in (HERE / "probes").glob("*.py"):
            shutil.copy(probe, run / probe.name)
        if not _has_pytest_config(run):
            # without one, pytest would take the configuration of the project around
            # .corpus/ (its addopts: -q twice prints no summary line)
            (run / "pytest.ini").write_text("[pytest]\n")
        env = {"TORNADO_EXTENSION": "0", "PYTHONPATH": str(SRC), "PYTHONDONTWRITEBYTECODE": "1"}
        # Tests that live inside the package (tornado/test) are imported by path, so that
        # the copied directory does not stand in for the installed old package.
        inside = any(
            "/" in d and (self.trees[self.old] / d.split("/")[0] / "__init__.py").exists()
            for d in self.row["test_dirs"].split()
        )  # tornado/test, h11/tests: not urllib3's top-level test/ and dummyserver/
        mode = ["--import-mode=importlib"] if inside else []
        package = self.options.get("tests_in_old_package")
        if package:  # the OLD package's source (what is installed), NEW's tests over it
            tests = {d: run / d for d in self.row["test_dirs"].split()}
            shutil.copytree(self.trees[self.old] / str(package), run / "_old", dirs_exist_ok=True)
            for d, where in tests.items():
                shutil.copytree(where, run / "_old" / Path(d).relative_to(str(package)),
                                dirs_exist_ok=True)  # fmt: skip
                shutil.rmtree(where)
            shutil.rmtree(run / str(package), ignore_errors=True)
            (run / "_old").rename(run / str(package))
            mode = []
        acceptance = self.row["acceptance"].split(" (")[0].split()
        fix = str(self.dir / "fix.lpz")

        def with_payload(cmd: list[str]) -> list[str]:
            return [self.venv_python, "-m", "pylivepatch", "test", fix, "--", *cmd]

        if acceptance and acceptance[0].startswith("probes/"):
            probe = [self.venv_python, acceptance[0].split("/", 1)[1]]

            def last_line(r: subprocess.CompletedProcess[str]) -> str:
                return (r.stdout.strip().splitlines() or [r.stderr.strip()[-200:]])[-1]

            a = sh(with_payload(probe), run, 300, env)
            b = sh(probe, run, 120, env)
            self.out.acceptance_with = last_line(a)
            for _ in range(2):  # a timing probe on a loaded machine: the best of three
                if self.out.acceptance_with.split(":")[0].split()[:1] in (["FIXED"], ["fast"]):
                    break
                again = last_line(sh(with_payload(probe), run, 300, env))
                self.out.notes.append(
                    f"acceptance run again: {self.out.acceptance_with} -> {again}"
                )
                self.out.acceptance_with = again
            self.out.acceptance_without = (
                b.stdout.strip().splitlines() or [b.stderr.strip()[-200:]]
            )[-1]
        elif acceptance and "::" in acceptance[0]:
            cmd = [
                self.venv_python,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                *mode,
                *acceptance,
            ]
            a = sh(with_payload(cmd), run, 600, env)
            b = sh(cmd, run, 300, env)
            if a.returncode not in (0, 124):  # once more: timing tests on a loaded machine
                again = sh(with_payload(cmd), run, 600, env)
                self.out.notes.append(
                    f"acceptance run again: {json.dumps(summary(a.stdout))} -> "
                    f"{json.dumps(summary(again.stdout))}"
                )
                a = again
            self.out.acceptance_with = json.dumps(summary(a.stdout))
            self.out.acceptance_without = (
                json.dumps(summary(b.stdout)) if b.returncode != 124 else "timed out"
            )
        else:
            self.out.notes.append(f"no acceptance check shipped: {self.row['acceptance']}")
        command = shlex.split(self.row["test_command"])
        if command[:1] == ["python"]:
            command = [self.venv_python, *command[1:]]
        if "pytest" in command:
            at = command.index("pytest") + 1
            # a test module that cannot be imported on OLD (it imports a name the fix
            # added) must not stop the others from running
            command[at:at] = ["-p", "no:cacheprovider", "--continue-on-collection-errors", *mode]
        self.log("running the new release's suite with the payload")
        a = self.suite(with_payload(command), run, env)
        self.out.suite_with = summary(a.stdout)
        self.out.failing_with = failing(a.stdout)
        self.log("and without it")
        b = self.suite(command, run, env)
        self.out.suite_without = summary(b.stdout)
        self.out.failing_without = failing(b.stdout)
        # A test failing only with the payload is run again (with it) before it counts:
        # timing tests fail now and then on a busy machine.
        for test_id in sorted(set(self.out.failing_with) - set(self.out.failing_without))[:10]:
            for _ in range(2):
                again = sh(with_payload([*command[: command.index("pytest") + 1], "-q", "-p",
                                         "no:cacheprovider", *mode, test_id]), run, 600, env)  # fmt: skip
                if again.returncode == 0:
                    break
            if again.returncode == 0:
                self.out.failing_with.remove(test_id)
                self.out.notes.append(
                    f"flaky: {test_id} failed once with the payload, passed again"
                )
        applied = [ln for ln in a.stderr.splitlines() if ln.startswith("pylivepatch test:")]
        self.out.notes += applied[:3]
        # objects made before the payload: the suite with the payload applied once every
        # test module is imported, and the pair's own probe (PAIR_OPTIONS)
        shutil.copy(HERE / "lp_after_collection.py", run / "lp_after_collection.py")
        late_env = dict(env, LPZ=fix, PYTHONPATH=os.pathsep.join([str(SRC), str(run)]))
        if "pytest" in command:
            at = command.index("pytest") + 1
            late = [*command[:at], "-p", "lp_after_collection", *command[at:]]
            self.log("and with the payload applied after the test modules are imported")
            c = self.suite(late, run, late_env)
            self.out.suite_late = summary(c.stdout)
            self.out.failing_late = failing(c.stdout)
        probe = self.options.get("old_objects")
        if probe:
            p = sh([self.venv_python, str(probe).split("/", 1)[1]], run, 300, late_env)
            self.out.old_objects = (p.stdout.strip().splitlines() or [p.stderr.strip()[-300:]])[-1]

    def suite(
        self, cmd: list[str], run: Path, env: dict[str, str]
    ) -> subprocess.CompletedProcess[str]:
        """One run of the suite; once more if it hangs to its timeout. A suite's own
        threads can deadlock now and then, with or without a payload (tqdm 4.66's:
        the main thread joins its monitor thread while holding the lock the monitor
        waits for; seen once in CI), and a hang is no verdict on the payload."""
        r = sh(cmd, run, self.suite_timeout, env)
        if r.returncode == 124:
            self.out.notes.append(f"a run of the suite hung ({r.stderr}); run once more")
            r = sh(cmd, run, self.suite_timeout, env)
        return r

    def verdict(self) -> str:
        return verdict_of(self.out)


def verdict_of(o: Outcome) -> str:
    """ok, or WRONG with why (also recomputed by --merge from saved results)."""
    if o.built == "error":
        return "ERROR"
    if o.built == "refused" and not o.reasons:  # a refusal must name the change
        return "WRONG: nothing built and no change named (the builder found nothing to patch)"
    if o.expected == "refuse":
        return "ok: refused as expected" if o.built == "refused" else "WRONG: built, should refuse"
    if o.built != "built":
        return "WRONG: refused, should build"
    good = {"FIXED", "fast"}
    if o.acceptance_with:
        if o.acceptance_with.split(":")[0].split()[0] in good or (
            o.acceptance_with.startswith("{")
            and not json.loads(o.acceptance_with).get("failed")
            and json.loads(o.acceptance_with).get("passed")
        ):
            acc = "acceptance passes with the payload"
        else:
            return f"WRONG: acceptance with the payload: {o.acceptance_with}"
    else:
        acc = "no acceptance check"
    fails_with = o.suite_with.get("failed", 0) + o.suite_with.get("error", 0)
    fails_without = o.suite_without.get("failed", 0) + o.suite_without.get("error", 0)
    # a module that does not import on OLD (it imports what the fix added) ran no
    # test without the payload: its failures with it are not comparable
    uncollected = {t for t in o.failing_without if "::" not in t}
    new = sorted(
        t for t in set(o.failing_with) - set(o.failing_without)
        if t.split("::")[0] not in uncollected
    )  # fmt: skip
    if new:
        return f"WRONG: fails only with the payload: {', '.join(new[:5])}"
    late = sorted(
        t for t in set(o.failing_late) - set(o.failing_without)
        if t.split("::")[0] not in uncollected
    )  # fmt: skip
    if late:
        return f"WRONG: fails only with the payload applied after import: {', '.join(late[:5])}"
    if o.old_objects and not o.old_objects.startswith("ok"):
        return f"WRONG: objects made before the payload: {o.old_objects}"
    more = ""
    if uncollected:
        more = f"; {', '.join(sorted(uncollected))} does not import without the payload"
    return f"ok: {acc}; suite failures {fails_without} without -> {fails_with} with{more}"


@dataclass
class Kept:
    """A pair's row and section copied from an earlier page (``--keep``): its results
    (JSON) are not at hand, so the page says again what it said then."""

    package: str
    old: str
    expected: str
    built: str
    verdict: str
    row: str
    section: list[str]

    @property
    def hooks(self) -> bool:
        return any(line.startswith("- built with ") for line in self.section)

    @property
    def migrated(self) -> bool:
        return any(line.startswith("- migrated: ") for line in self.section)


def read_page(path: Path) -> tuple[list[str], dict[tuple[str, str], Kept]]:
    """The hand-written paragraphs of a page made by write_markdown (between its
    summary and "Run the whole corpus"), and its pairs' rows and sections."""
    lines = path.read_text("utf-8").splitlines()
    notes: list[str] = []
    if "" in lines[2:]:
        after = lines.index("", 2) + 1
        end = next(
            (i for i, ln in enumerate(lines) if ln.startswith("Run the whole corpus")), after
        )
        notes = lines[after:end]
    sections: dict[tuple[str, str], list[str]] = {}
    current: list[str] | None = None
    for line in lines:
        m = re.match(r"^## (\S+) (\S+) → (\S+)$", line)
        if m:
            current = sections[(m[1], m[2])] = [line]
        elif current is not None:
            current.append(line)
    kept = {}
    for line in lines:
        m = re.match(r"^\| (\S+) \| (\S+) → \S+ \| (\w+) \| (\w+) \| ", line)
        if m and m[1] != "package":
            verdict = line.rstrip().rstrip("|").rsplit(" | ", 1)[1].strip()
            kept[(m[1], m[2])] = Kept(m[1], m[2], m[3], m[4], verdict, line,
                                      sections.get((m[1], m[2]), []))  # fmt: skip
    return notes, kept


def _suite(c: dict[str, int]) -> str:
    if not c:
        return "-"
    return f"{c.get('failed', 0) + c.get('error', 0)} / {c.get('passed', 0)}"


def row_of(o: Outcome) -> str:
    detail = "<br>".join(o.reasons) if o.reasons else f"{len(o.changes)} changes"
    return (
        f"| {o.package} | {o.old} → {o.new} | {o.expected} | {o.built} | {o.build_seconds} | "
        f"{detail} | {o.acceptance_without or '-'} → {o.acceptance_with or '-'} | "
        f"{_suite(o.suite_without)} → {_suite(o.suite_with)} | {o.verdict} |"
    )


def section_of(o: Outcome) -> list[str]:
    if not (o.changes or o.notes or o.warnings):
        return []
    lines = [f"## {o.package} {o.old} → {o.new}", ""]
    lines += [f"- {c}" for c in o.changes]
    ignored = [w for w in o.warnings if "; ignored: " in w]
    lines += [f"- ignored: `{w.split(': ', 1)[0]}` {w.split(': ', 1)[1]}" for w in ignored[:12]]
    if len(ignored) > 12:
        lines.append(f"- ... and {len(ignored) - 12} more ignored changes of the same kinds")
    lines += [f"- migrated: {w}" for w in o.warnings if "; migrated: " in w]
    if o.build_options:
        lines.append(f"- built with `{' '.join(o.build_options)}`")
    if o.suite_late:
        lines.append(
            "- suite with the payload applied after the test modules are imported "
            f"(their objects made by the old code): {_suite(o.suite_late)}"
        )
    if o.old_objects:
        lines.append(f"- objects made before the payload (probe): {o.old_objects}")
    lines += [f"- note: {n}" for n in o.notes]
    fixed = sorted(set(o.failing_without) - set(o.failing_with))
    still = sorted(set(o.failing_with) & set(o.failing_without))
    if fixed:
        lines.append(f"- fail without the payload, pass with it: {', '.join(fixed)}")
    if still:
        lines.append(f"- fail with and without it (the environment): {', '.join(still)}")
    return [*lines, ""]


def write_markdown(
    outcomes: list[Outcome | Kept], path: Path, notes: list[str] | None = None
) -> None:
    """The page: a summary computed from every pair, the hand-written ``notes`` (kept
    from the page this one replaces), the table, and a section per pair."""

    def hooks(o: Outcome | Kept) -> bool:
        return o.hooks if isinstance(o, Kept) else bool(o.build_options)

    def migrated_by_builder(o: Outcome | Kept) -> bool:
        if isinstance(o, Kept):
            return o.migrated
        return any("; migrated: " in w for w in o.warnings)

    function_level = [o for o in outcomes if o.expected == "build"]
    # a pair yields when it builds and its checks pass (verdict ok)
    built = [o for o in function_level if o.built == "built" and o.verdict.startswith("ok")]
    plain = [o for o in built if not hooks(o)]
    bare = [o for o in plain if not migrated_by_builder(o)]
    migrated = [o for o in outcomes if migrated_by_builder(o)]
    ok = [o for o in outcomes if o.verdict.startswith("ok")]
    n = len(function_level)
    lines = [
        "# The builder on real release pairs",
        "",
        f"**{len(outcomes)} pairs; yield {len(bare)} / {n} without migration or any flag, "
        f"{len(plain)} / {n} with the builder's own migration, {len(built)} / {n} with the "
        "author's hooks besides**: of the pairs whose fix is function-level (code, helpers, "
        "patterns and constants: `expected` is build), the share that build and pass their "
        "checks (verdict ok): without any flag and without a migration by the builder; "
        "without any flag (the builder migrated instance state by itself, in "
        f"{len(migrated)} pair(s) that show it: a new attribute whose value an old object "
        "provably would have had becomes a class-level default; rows kept from an earlier "
        "page show it only where their section lists it); and with the hooks a pair's author "
        "wrote for state objects made before the patch need (corpus/hooks/, `--allow "
        f"instance-state` and the like). {len(ok)} / {len(outcomes)} pairs are ok (built and "
        "the fix works without breaking the release's suite, or refused as expected with the "
        "change a running process cannot take named).",
        "",
        *([*notes] if notes else []),
        "Run the whole corpus (about an hour on two cores; downloads and virtualenvs go to",
        "`.corpus/`, which git ignores, and are reused) with",
        "",
        "    python corpus/run.py --out docs/corpus.md --json .corpus/results.json",
        "",
        "or in batches side by side (`--only NAME[==OLD] ... --json .corpus/bN.json` each, then",
        "`python corpus/run.py --merge .corpus/b*.json --keep docs/corpus.md --out docs/corpus.md`,",
        "which is how this page was made: the latest result of each pair wins, and a pair",
        "without results keeps its row and section from the page named by `--keep`, as do",
        "the page's hand-written paragraphs after the summary), and one pair with",
        "`--only NAME==OLD`. CI runs `--fast` (" + ", ".join(sorted(FAST)) + ").",
        "",
        "Generated by `python corpus/run.py` (see its docstring). Each pair is a PyPI release",
        "and the next one, which fixes a security bug. *Acceptance* is the check that the fix",
        "works (a probe, or the tests the fix added), run against the OLD release installed,",
        "with the payload (`pylivepatch test`) and without. *Suite* is the NEW release's whole",
        "test suite against the OLD release: failed+errors / passed. A test that fails with",
        "the payload and not without it makes the pair WRONG (after two re-runs: timing tests",
        "flake on a busy machine). Tests that fail with and without the payload fail because",
        "of this environment (listed per pair below): running as root (permission tests),",
        "no outside network and a self-signed proxy (urllib3's TLS tests), today's date",
        "(urllib3's `test_recent_date`), a development server's reloader (werkzeug).",
        "Where a pair is refused, the reasons are the builder's own words. *Expected* is",
        "what the fix is: `build` for a function-level fix (with whatever typing-only and",
        "release noise the release carries), `refuse` for a fix that changes state or data",
        "a running process holds (the pairs' notes in corpus/pairs.tsv say what).",
        "",
        "| package | old → new | expected | result | build s | changes / refusals | acceptance without → with payload | suite without → with payload | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        lines.append(o.row if isinstance(o, Kept) else row_of(o))
    lines.append("")
    for o in outcomes:
        lines += o.section if isinstance(o, Kept) else section_of(o)
    path.write_text("\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", default=str(HERE / "pairs.tsv"))
    ap.add_argument("--only", action="append", default=[], help="NAME or NAME==OLD")
    ap.add_argument("--fast", action="store_true", help="only the pairs CI runs")
    ap.add_argument("--work", default=str(ROOT / ".corpus"))
    ap.add_argument("--out", help="Markdown table to write (e.g. docs/corpus.md)")
    ap.add_argument("--json", help="JSON results to write")
    ap.add_argument("--python", default=sys.executable, help="interpreter for the virtualenvs")
    ap.add_argument(
        "--merge", nargs="+", metavar="JSON",
        help="write --out from the results of earlier runs (--json), in pairs.tsv's order, "
        "instead of running: batches of pairs can run side by side",
    )  # fmt: skip
    ap.add_argument(
        "--keep", metavar="PAGE",
        help="with --merge: pairs without results keep their row and section from this "
        "earlier page (e.g. docs/corpus.md), and its hand-written paragraphs are kept",
    )  # fmt: skip
    args = ap.parse_args()
    with open(args.pairs) as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if args.merge:
        found: dict[tuple[str, str], Outcome] = {}
        for name in args.merge:
            for item in json.loads(Path(name).read_text()):
                o = Outcome(**item)
                o.verdict = verdict_of(o)
                found[(o.package, o.old)] = o
        expected = {(r["package"], r["old"]): r["expected"] for r in rows}
        for key, o in found.items():  # what a pair is expected to do is the table's word
            if key in expected and o.expected != expected[key]:
                o.expected = expected[key]
                o.verdict = verdict_of(o)
        notes, kept = read_page(Path(args.keep)) if args.keep else ([], {})
        merged: list[Outcome | Kept] = []
        missing = []
        for r in rows:
            key = (r["package"], r["old"])
            if key in found or key in kept:
                merged.append(found.get(key) or kept[key])
            else:
                missing.append(f"{r['package']}=={r['old']}")
        if missing:
            print(f"no results for {', '.join(missing)}", file=sys.stderr)
            return 1
        if args.out:
            write_markdown(merged, Path(args.out), notes)
        return 0 if all(o.verdict.startswith("ok") for o in merged) else 1
    wanted = []
    for row in rows:
        key = f"{row['package']}=={row['old']}"
        if args.only and row["package"] not in args.only and key not in args.only:
            continue
        if args.fast:
            Pair.suite_timeout = FAST_SUITE_TIMEOUT
        if args.fast and key not in FAST:
            continue
        wanted.append(row)
    work = Path(args.work)
    outcomes: list[Outcome] = []
    for row in wanted:
        outcomes.append(Pair(row, work, args.python).run())
        if args.json:  # after every pair: a stopped run keeps what it found
            Path(args.json).write_text(json.dumps([asdict(o) for o in outcomes], indent=2))
    for o in outcomes:
        print(f"{o.package:10} {o.old:>9} -> {o.new:<9} {o.built:8} {o.verdict}")
    if args.out:
        write_markdown(outcomes, Path(args.out))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(o) for o in outcomes], indent=2))
    return 0 if all(o.verdict.startswith("ok") for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
