"""A pytest plugin of the corpus: applies the payload named by ``LPZ`` once every test
module is imported, so the objects the suite's modules make at import (applications,
parsers, module-level fixtures' inputs) were made by the OLD code before the payload:
``pytest -p lp_after_collection`` (corpus/run.py copies it next to the suite)."""

import os


def pytest_collection_finish(session):
    import pylivepatch

    with open(os.environ["LPZ"], "rb") as fh:
        pylivepatch.engine().load(fh.read(), wait_imports=True)
