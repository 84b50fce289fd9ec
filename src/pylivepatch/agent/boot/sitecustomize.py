"""Started by ``pylivepatch run``: give this Python process an agent, apply the payloads
installed for its app, then run the ``sitecustomize`` this module shadows, if any.
Under ``pylivepatch test``: apply the payloads under test instead of starting an agent.

Never breaks the program it is loaded into: any failure is reported on stderr once.
"""


def _boot() -> None:
    import importlib
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        if os.environ.get("PYLIVEPATCH_TEST_PAYLOADS"):  # pylivepatch test
            from pylivepatch.agent.testing import apply_test_payloads

            apply_test_payloads()
        else:
            import pylivepatch

            pylivepatch.start()
    except Exception as exc:  # noqa: BLE001 - the host program must run regardless
        print(f"pylivepatch: the agent did not start: {type(exc).__name__}: {exc}", file=sys.stderr)
    # Chain to the program's own sitecustomize (a virtualenv's, a distribution's): take
    # this directory off sys.path so the next one on the path is found and imported.
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    ours = sys.modules.pop("sitecustomize", None)
    try:
        importlib.import_module("sitecustomize")  # the shadowed one, run for its effects
    except ImportError as exc:
        if exc.name != "sitecustomize":
            raise
        if ours is not None:
            sys.modules["sitecustomize"] = ours


_boot()
