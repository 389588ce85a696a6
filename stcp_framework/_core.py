"""Which build of the pure cores runs: mypyc's extensions, or the Python sources.

``scripts/build_core.py`` compiles every module of ``stcp_framework.wire`` and
``stcp_framework.tcp`` with mypyc, in place, and records the SHA-256 of each source in
``_core_build.json``. Python prefers an extension module to a source file of the same name,
so a build older than its sources would silently run code that is no longer there.
``select_core`` (called first thing by ``stcp_framework/__init__.py``) prevents that: unless
the record matches every source byte for byte, it puts a finder in front of the import
system that loads these modules from their sources, and says so once on stderr.
``STCP_PURE=1`` does the same on purpose (cProfile sees only Python functions, debuggers
step only through Python).
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

PACKAGE_DIR = Path(__file__).resolve().parent
CORE_PACKAGES = ("wire", "tcp")
# mypyc's shared library of the group, a top-level module beside the package directory
# (mypyc derives each compiled module's __file__ and __path__ from its location)
GROUP = "stcp_core"
SHARED_LIB = GROUP + "__mypyc"
BUILD_STAMP = PACKAGE_DIR / "_core_build.json"
_EXT_SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def core_sources() -> list[Path]:
    """The source files the build compiles, in a stable order."""
    return sorted(p for pkg in CORE_PACKAGES for p in (PACKAGE_DIR / pkg).glob("*.py"))


def module_name(source: Path) -> str:
    parts = source.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _digests(sources: Sequence[Path]) -> dict[str, str]:
    return {
        str(p.relative_to(PACKAGE_DIR)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sources
    }


def write_stamp(sources: Sequence[Path]) -> None:
    record = {"cache_tag": sys.implementation.cache_tag, "sources": _digests(sources)}
    BUILD_STAMP.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


def _extension_of(source: Path) -> Path:
    if source.name == "__init__.py":
        return source.with_name("__init__" + _EXT_SUFFIX)
    return source.with_suffix(_EXT_SUFFIX)


def build_is_current() -> bool:
    """Whether every core module has an extension built from exactly its present source."""
    try:
        record = json.loads(BUILD_STAMP.read_text())
    except (OSError, ValueError):
        return False
    sources = core_sources()
    if record.get("cache_tag") != sys.implementation.cache_tag:
        return False
    if not all(_extension_of(p).exists() for p in sources):
        return False
    if not (PACKAGE_DIR.parent / f"{SHARED_LIB}{_EXT_SUFFIX}").exists():
        return False
    current: bool = record.get("sources") == _digests(sources)
    return current


class _SharedLibFinder(importlib.abc.MetaPathFinder):
    """Finds the group's shared library beside the package directory, which is not on
    ``sys.path`` in an editable install (its finder maps ``stcp_framework`` only)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != SHARED_LIB:
            return None
        return importlib.util.spec_from_file_location(
            fullname, PACKAGE_DIR.parent / f"{SHARED_LIB}{_EXT_SUFFIX}"
        )


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Loads the core modules from their ``.py`` files, never from an extension."""

    def __init__(self, sources: Sequence[Path]) -> None:
        self._files = {module_name(p): p for p in sources}

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        source = self._files.get(fullname)
        if source is None:
            return None
        package = source.name == "__init__.py"
        return importlib.util.spec_from_file_location(
            fullname, source, submodule_search_locations=[str(source.parent)] if package else None
        )


def select_core() -> None:
    """Run the sources instead of the extensions when these are stale or ``STCP_PURE=1``."""
    if not any(_extension_of(p).exists() for p in core_sources()):
        return  # never built: the sources run anyway
    pure = os.environ.get("STCP_PURE", "") not in ("", "0")
    if not pure and build_is_current():
        sys.meta_path.append(_SharedLibFinder())
        return
    if not pure:
        print(
            "stcp: the compiled core is older than its sources; running the sources "
            "(scripts/build_core.py rebuilds it)",
            file=sys.stderr,
        )
    sys.meta_path.insert(0, _SourceFinder(core_sources()))


def compiled() -> bool:
    """Whether the core in use is mypyc's build."""
    from stcp_framework.tcp import machine

    return not machine.__file__ or machine.__file__.endswith(_EXT_SUFFIX)
