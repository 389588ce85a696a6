"""The compiled core (``scripts/build_core.py``, ``stcp_framework._core``): it runs only
when built from exactly the sources present, and CI tests it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stcp_framework import _core

REPO = Path(__file__).resolve().parent.parent
PROBE = "import stcp_framework._core as c; print(c.compiled())"


def test_the_compiled_core_runs_exactly_when_current() -> None:
    pure = os.environ.get("STCP_PURE", "") not in ("", "0")
    assert _core.compiled() == (_core.build_is_current() and not pure)
    if os.environ.get("CI") == "true":
        # scripts/test builds it (scripts/bootstrap): CI must test what runs
        assert _core.compiled(), "CI runs the sources: scripts/build_core.py did not build"


def _copy_of_the_build(tmp_path: Path) -> Path:
    if not _core.build_is_current():
        if os.environ.get("CI") == "true":
            pytest.fail("no current build of the core (scripts/build_core.py)")
        pytest.skip("no current build of the core here (scripts/build_core.py)")
    root = tmp_path / "tree"
    shutil.copytree(REPO / "stcp_framework", root / "stcp_framework")
    for lib in REPO.glob(f"{_core.SHARED_LIB}*"):
        shutil.copy2(lib, root / lib.name)
    return root


def _probe(root: Path, code: str = PROBE, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter that imports stcp_framework from ``root``."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root), "STCP_PURE": "", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_a_current_build_is_used_silently(tmp_path: Path) -> None:
    done = _probe(_copy_of_the_build(tmp_path))
    assert done.stdout.strip() == "True"
    assert done.stderr == ""


def test_an_edited_source_runs_instead_of_the_stale_build(tmp_path: Path) -> None:
    root = _copy_of_the_build(tmp_path)
    seq = root / "stcp_framework/wire/seq.py"
    seq.write_text(seq.read_text() + "\nEDITED = True\n")
    done = _probe(root)
    assert done.stdout.strip() == "False"
    assert done.stderr.count("\n") == 1
    assert "compiled core is older than its sources" in done.stderr
    edited = _probe(root, "import stcp_framework.wire.seq as s; print(s.EDITED)")
    assert edited.stdout.strip() == "True"  # the edit itself runs


def test_stcp_pure_runs_the_sources_on_request(tmp_path: Path) -> None:
    done = _probe(_copy_of_the_build(tmp_path), STCP_PURE="1")
    assert done.stdout.strip() == "False"
    assert done.stderr == ""
