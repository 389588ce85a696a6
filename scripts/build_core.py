"""Compile stcp's pure protocol cores with mypyc, in place: ``python scripts/build_core.py``.

``stcp_framework.wire`` and ``stcp_framework.tcp`` are pure, fully typed Python (no I/O,
no trio); mypyc turns each module into a C extension next to its source
(``tcp/machine.cpython-311-x86_64-linux-gnu.so`` beside ``tcp/machine.py``), which Python
then imports instead of the source. Same code, same behaviour, ~12 % less of a
server's CPU per connection (``bench/README.md``, ninth session). ``scripts/bootstrap``
runs this; it does nothing when the build is up to date.

The build records the SHA-256 of every compiled source in ``stcp_framework/_core_build.json``.
``stcp_framework._core`` compares it at import: if any source changed since (an edit, a
checkout), the extensions are ignored and the sources run, with one line on stderr, so a
stale build can never run in place of the code you see. ``STCP_PURE=1`` skips the
extensions too (profiling with cProfile, debugging); ``--clean`` removes them.

Options: ``--force`` rebuilds even when up to date, ``--clean`` removes the build.
Needs a C compiler and the Python headers (``scripts/bootstrap`` installs them).
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import os
import shutil
import sys
import time
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent


def _load_core_module() -> ModuleType:
    """``stcp_framework/_core.py`` on its own: importing the package would run
    ``select_core`` and import the (maybe stale) build being replaced."""
    spec = importlib.util.spec_from_file_location("_stcp_core", REPO / "stcp_framework/_core.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_core = _load_core_module()
BUILD_STAMP: Path = _core.BUILD_STAMP
GROUP: str = _core.GROUP
PACKAGE_DIR: Path = _core.PACKAGE_DIR
SHARED_LIB: str = _core.SHARED_LIB
build_is_current = _core.build_is_current
core_sources = _core.core_sources
write_stamp = _core.write_stamp
BUILD_DIR = REPO / "build" / "mypyc"


def _extensions() -> list[Path]:
    """Every compiled file of a previous build (modules and the group's shared library)."""
    found: list[Path] = []
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        found.extend(PACKAGE_DIR.rglob(f"*{suffix}"))
        found.extend(REPO.glob(f"{SHARED_LIB}*{suffix}"))
    return sorted(set(found))


def clean() -> None:
    for path in _extensions():
        path.unlink()
    BUILD_STAMP.unlink(missing_ok=True)
    shutil.rmtree(BUILD_DIR, ignore_errors=True)


def build() -> None:
    from mypyc.build import mypycify
    from setuptools import Distribution

    sources = core_sources()
    started = time.monotonic()
    clean()
    old = os.getcwd()
    os.chdir(REPO)  # mypyc names modules from paths relative to the working directory
    try:
        extensions = mypycify(
            [str(p.relative_to(REPO)) for p in sources],
            opt_level="3",
            multi_file=True,  # one C file per module: smaller units for the compiler
            group_name=GROUP,
            target_dir=str(BUILD_DIR),
        )
        dist = Distribution({"name": "stcp-core", "ext_modules": extensions})
        cmd = dist.get_command_obj("build_ext")
        cmd.inplace = True
        cmd.parallel = os.cpu_count() or 1  # (across extensions: the per-module shims)
        cmd.build_temp = str(BUILD_DIR / "temp")
        dist.run_command("build_ext")
    finally:
        os.chdir(old)
    write_stamp(sources)
    print(
        f"build_core: compiled {len(sources)} modules with mypyc "
        f"in {time.monotonic() - started:.0f} s",
        file=sys.stderr,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--force", action="store_true", help="rebuild even when up to date")
    ap.add_argument("--clean", action="store_true", help="remove the compiled modules")
    args = ap.parse_args()
    if args.clean:
        clean()
        print("build_core: removed the compiled modules", file=sys.stderr)
        return 0
    if not args.force and build_is_current():
        return 0
    try:
        build()
    except Exception as exc:  # the compiler's or mypyc's own output is above
        clean()  # never leave half a build behind: the sources run
        print(f"build_core: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if not build_is_current():
        print("build_core: the build did not produce every module", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
