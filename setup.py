"""The compiled forms of hot loops; everything else about the package is in pyproject.toml.

Each extension has its pure-Python original beside it, which runs when the build had no C compiler
(`optional`: the install then goes on without it) or with STOREPULSE_NO_EXTENSIONS=1 (daemon/native.py);
the tests run both. setuptools compiles the .pyx with Cython (a build requirement in pyproject.toml).
"""

import os

from setuptools import Extension, setup

# The extensions compile in parallel, one per core (gcc -O3 of Cython's C: ~38 -> 23 s of a fresh
# install on two cores); a failure of one still skips only that one (optional).
setup(options={"build_ext": {"parallel": os.cpu_count() or 1}}, ext_modules=[
    Extension("daemon._columns", ["daemon/_columns.pyx"], optional=True),                        # the folds' row loops (columns.py)
    Extension("daemon.analyzers._recfold", ["daemon/analyzers/_recfold.pyx"], optional=True),    # Recommender.observe
    Extension("daemon.pipeline._dedupe", ["daemon/pipeline/_dedupe.pyx"], optional=True),        # the seen-id table's probe
    Extension("daemon.metrics._distinct", ["daemon/metrics/_distinct.pyx"], optional=True),      # Distinct's group folds
    Extension("daemon.stores._arrowcols", ["daemon/stores/_arrowcols.pyx"], optional=True),      # str lists -> Arrow
    Extension("daemon.windows._statedump", ["daemon/windows/_statedump.pyx"], optional=True),    # a full state write's records
    Extension("daemon.stores._segments", ["daemon/stores/_segments.pyx"], optional=True),        # SegmentBuilder.put
])
