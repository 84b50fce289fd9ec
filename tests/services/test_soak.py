"""The short soak (benchmarks/soak.py; the long one is documented in docs/benchmarks.md):
gunicorn (gthread, 4 workers) and uvicorn (2 workers) under `pylivepatch run` and a
bounded load, every worker applying and reverting a payload that changes two
cooperating functions, alternately atomic and transition. No request fails, no answer
mixes the versions of the two functions, and no worker's resident memory grows by 1 %
or more after the 3,000-cycle warm-up (which covers the process reaching its steady state:
benchmarks/soak.py says why it takes that long)."""

from __future__ import annotations

# Loaded here, before client threads: a first lookup of the idna codec racing in several
# threads can leave it cached as unknown for the whole process (LookupError).
import encodings.idna  # noqa: F401
import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.system  # starts servers, gdb or namespaces: not in the fast lane

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"


def soak_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lp_bench_soak", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def available(server: str) -> bool:
    if server == "gunicorn":
        beside = Path(sys.executable).with_name("gunicorn")
        return beside.exists() or shutil.which("gunicorn") is not None
    return importlib.util.find_spec("uvicorn") is not None


@pytest.mark.parametrize("server", ["gunicorn", "uvicorn"])
def test_short_soak(server):
    if not available(server):
        pytest.skip(f"{server} is not installed")
    soak = soak_module()
    outcome = soak.soak(
        server, cycles=300, warmup=3000, connections=4, rate=50.0, workers_only=True,
        log=lambda *args: None,
    )  # fmt: skip
    assert outcome.workers == (4 if server == "gunicorn" else 2)
    assert outcome.requests > 0
    # a process that died: its stacks (faulthandler) are in the server's log
    assert outcome.errors == [], (outcome.errors, outcome.log_tail)
    assert outcome.failed == [], (outcome.failed[:5], outcome.log_tail)
    assert outcome.mixed == [], outcome.mixed[:5]
    assert len(outcome.growth) == outcome.workers, "memory read in every worker"
    assert outcome.max_growth < 1.0, (outcome.growth, outcome.rss, outcome.threads)
    # every worker served both versions during the cycles
    assert all(v["1"] and v["2"] for v in outcome.answered.values()), outcome.answered


def test_the_soak_sees_mixed_answers_when_swaps_are_not_consistent():
    """The check above can fail: with ``immediate`` (no consistency: the swap does not
    wait for the request's frames) answers that mix the two versions do show up."""
    if not available("gunicorn"):
        pytest.skip("gunicorn is not installed")
    soak = soak_module()
    outcome = soak.soak(
        "gunicorn", cycles=150, warmup=0, connections=4, rate=50.0, workers_only=True,
        modes=("immediate",), log=lambda *args: None,
    )  # fmt: skip
    assert outcome.failed == [] and outcome.errors == []
    assert outcome.mixed, "a swap between outer's version and its call of inner shows"
