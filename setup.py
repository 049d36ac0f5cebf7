"""Compiled parts: every ``.pyx`` under ``tasks/`` becomes an extension module beside its source.

The metadata lives in pyproject.toml; this file only lists the extensions, which pyproject cannot.
"""

from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

ROOT = Path(__file__).parent
SOURCES = sorted(p.relative_to(ROOT) for p in (ROOT / "tasks").rglob("*.pyx"))

setup(
    ext_modules=cythonize(
        [Extension(".".join(p.with_suffix("").parts), [str(p)], extra_compile_args=["-O2"]) for p in SOURCES],
        compiler_directives={"language_level": 3, "boundscheck": False, "wraparound": False},
        quiet=True,
    )
)
