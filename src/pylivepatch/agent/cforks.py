"""Workers forked by a server's C code get an agent too.

Python's at-fork hooks (``os.register_at_fork``) run only for forks made through
Python (``os.fork``, ``multiprocessing``, gunicorn). A server embedding Python that
forks its workers in C never runs them: uWSGI's master forks its workers with
``fork(2)`` and, unless started with ``--py-call-osafterfork``, calls none of Python's
after-fork code in them. Such a worker would run without an agent, so no action could
reach it.

uWSGI calls ``uwsgi.post_fork_hook`` (an attribute of its embedded ``uwsgi`` module)
in every worker, mule and spooler it forks. :func:`watch` sets it when the agent
starts in a uWSGI process; the hook starts the forked process's agent when its pid is
not the agent's (an agent already started by Python's own at-fork hook, with
``--py-call-osafterfork``, is left alone), then calls the program's own hook. A
program that sets ``uwsgi.post_fork_hook`` later (``uwsgidecorators`` does when it is
imported) sets the hook called after the agent's: the agent's stays first.

Threads. uWSGI 2.0.31 (the one tested) runs Python with threads always enabled
(``--enable-threads`` is a no-op there). Older releases disable them unless started
with ``--enable-threads`` or ``--threads N``: a process then keeps the GIL while it
waits in C, and the agent's thread runs only while the process runs Python code. The
agent still starts (it is no worse than none), and says on stderr, in each forked
process, to start uWSGI with ``--enable-threads``.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from collections.abc import Callable

#: the hook installed in this process (to recognize it when it is already there)
_hook: Callable[[], None] | None = None


def _embedded_uwsgi() -> types.ModuleType | None:
    """uWSGI's embedded ``uwsgi`` module, or None outside uWSGI. It is a built-in module
    of the uWSGI binary; with Python 3.12 and later uWSGI registers it before Python
    starts, with older ones only after (after ``sitecustomize`` ran): there the module is
    made here, empty, and uWSGI fills the one it finds in ``sys.modules``."""
    module = sys.modules.get("uwsgi")
    if module is not None:
        return module if type(module) is types.ModuleType else None
    if "uwsgi" in sys.builtin_module_names:
        return importlib.import_module("uwsgi")
    if sys.version_info >= (3, 12) or not _uwsgi_binary():
        return None
    module = types.ModuleType("uwsgi", "uWSGI api module.")
    sys.modules["uwsgi"] = module
    return module


def _uwsgi_binary() -> bool:
    """Whether this process runs uWSGI's binary (its Python plugin's symbols are in the
    executable). Only for an executable not named python*: ctypes is looked up then."""
    try:
        exe = os.readlink("/proc/self/exe")
    except OSError:
        return False
    if os.path.basename(exe).startswith("python"):
        return False
    try:
        import ctypes

        ctypes.CDLL(None).uwsgi_python_post_fork  # noqa: B018 - AttributeError if absent
    except (ImportError, OSError, AttributeError):
        return False
    return True


class _Watched(types.ModuleType):
    """uWSGI's module once the hook is set: a program setting ``post_fork_hook`` (as
    ``uwsgidecorators`` does at import) sets the hook called after the agent's, and
    the agent's stays first (uWSGI reads the attribute from the module's dict)."""

    def __setattr__(self, name: str, value: object) -> None:
        if name == "post_fork_hook" and _hook is not None and value is not _hook:
            _program_hook[:] = [value]
            return
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        if name == "post_fork_hook" and _hook is not None:
            _program_hook.clear()
            return
        super().__delattr__(name)


#: the program's own post-fork hook, called after the agent's
_program_hook: list[object] = []


def watch(after_fork: Callable[[], None]) -> None:
    """In uWSGI, call ``after_fork`` (the agent's own at-fork hook: it starts an agent
    in a process whose pid is not its agent's) in every process uWSGI forks from this
    one, then the program's own hook. Installed once per process."""
    global _hook
    module = _embedded_uwsgi()
    if module is None or _hook is not None:
        return
    before = module.__dict__.get("post_fork_hook")
    if before is not None:
        _program_hook[:] = [before]

    def pylivepatch_post_fork() -> None:
        try:
            _python_after_fork()
            after_fork()
            if not module.__dict__.get("has_threads", True):
                _warn_no_threads()
        except Exception as exc:  # noqa: BLE001 - the worker must run regardless
            print(f"pylivepatch: the agent did not start in process {os.getpid()}: "
                  f"{type(exc).__name__}: {exc}", file=sys.stderr)  # fmt: skip
        for hook in list(_program_hook):
            if callable(hook):
                hook()

    _hook = pylivepatch_post_fork
    module.__dict__["post_fork_hook"] = pylivepatch_post_fork
    try:
        module.__class__ = _Watched
    except TypeError:  # a module of another type: the program's hook replaces ours
        pass


#: values of a uWSGI flag option that turn it off (given on the command line a flag is
#: True; from the environment or an ini file it is the bytes written there)
_OFF = {b"", b"0", b"false", b"no", b"off", False, None}


def fork_hazard() -> str | None:
    """Why an agent's thread must not start in this process, or None.

    uWSGI's master forks its workers from C while the master's Python threads may run:
    without ``--py-call-uwsgi-fork-hooks`` it does not take Python's lock (the GIL)
    first, so a worker forked while another thread of the master held it starts with
    that lock held by a thread that does not exist there, and waits for it forever. A
    uWSGI master has no Python thread of its own; the agent's would be the first. With
    the option, uWSGI takes the lock before each fork and sets up Python in the child
    as ``os.fork`` does. Read from uWSGI's own module (its option table and the
    master's pid); before uWSGI has filled it (an agent started by ``pylivepatch run``
    at the interpreter's start, where ``run`` sets the option) there is nothing to
    read, and None is answered."""
    module = sys.modules.get("uwsgi")
    if module is None:
        return None
    opt = module.__dict__.get("opt")
    masterpid = module.__dict__.get("masterpid")
    if type(opt) is not dict or not callable(masterpid) or masterpid() != os.getpid():
        return None
    if not module.__dict__.get("has_threads", True):
        return None  # the master keeps the lock whenever it runs: no other thread has it
    value = opt.get("py-call-uwsgi-fork-hooks")
    if type(value) is bytes:
        value = value.strip().lower()
    if value not in _OFF:
        return None
    return (
        f"process {os.getpid()} is a uWSGI master started without "
        "--py-call-uwsgi-fork-hooks: a worker it forks while the agent's thread runs "
        "Python would wait forever for the lock that thread held (uWSGI forks in C "
        "without taking it). Start uWSGI with --py-call-uwsgi-fork-hooks (or "
        "UWSGI_PY_CALL_UWSGI_FORK_HOOKS=1 in its environment; `pylivepatch run` sets it), "
        "then attach again"
    )


def _python_after_fork() -> None:
    """What pylivepatch's own at-fork hooks do in a child, for a fork that ran none of
    them: a fresh import lock for the agent, and an action another thread was running
    in the parent undone (it cannot end here). Harmless when they did run
    (``--py-call-osafterfork``): there is nothing left to do then."""
    from .. import process_engine

    process_engine._after_fork_in_child()
    forks = sys.modules.get("pylivepatch.engine.forks")
    if forks is not None:
        forks._after_in_child()


def _warn_no_threads() -> None:
    print(
        f"pylivepatch: uWSGI runs process {os.getpid()} without Python threads: its agent "
        "answers only while the process runs Python code. Start uWSGI with "
        "--enable-threads (uWSGI 2.0.30 and later have them by default)",
        file=sys.stderr,
    )
