"""Sources of regenerable sends: bytes an application can read again by offset.

``Stream.send_from(source, ...)`` sends a source's bytes without storing them: the
store records (stream range, source name, source offset) and a restarted stack reads
the unacknowledged bytes from the source again (``tcp/txmap.py``). So a source must
give the same bytes for the same offset for as long as any connection may need them,
in this process and in the next one:

* ``FileSource``: a regular file; its name carries the file's identity (inode, size,
  modification time), and a restart refuses a file that changed.
* anything else with a ``name`` and ``read(offset, size)``: register it with
  ``open_stack(..., sources=[...])`` in every incarnation (chargen's pattern is one).

A source may also have a ``size``: the offset where it ends (``FileSource``), or
``math.inf`` when it never does (chargen). ``Stream.send_from`` then knows how far the
application will send, and records the extent ahead of the bytes queued, so they leave
without a commit per round (``tcp/txmap.py``, reservation).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

FILE_PREFIX = "file:"


class SourceError(Exception):
    """A regenerable send cannot be read again (unknown source, file changed)."""


@runtime_checkable
class Source(Protocol):
    """Bytes that can be read again by offset, the same every time."""

    @property
    def name(self) -> str:
        """Durable identifier: what a restarted stack resolves the source by."""
        ...

    def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes from ``offset``; fewer only at the end (b"" past it)."""
        ...


class FileSource:
    """A regular file, read with ``pread``.

    Args:
        path: The file. It must not change while connections send from it: a restarted
            stack compares its inode, size and modification time with the ones recorded
            and resets the connections whose file changed.

    Raises:
        OSError: The file cannot be opened.
        SourceError: Not a regular file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        st = os.fstat(self._fd)
        if not os.path.isfile(self.path):
            os.close(self._fd)
            raise SourceError(f"{self.path}: not a regular file")
        self.size = st.st_size
        self._name = f"{FILE_PREFIX}{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{self.path}"

    @property
    def name(self) -> str:
        return self._name

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self._fd, max(0, min(size, self.size - offset)), offset)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def reopen(cls, name: str) -> FileSource:
        """The file a ``FileSource`` name names, if it is still the same file.

        Raises:
            SourceError: Bad name, file gone or changed.
        """
        try:
            ino, size, mtime, path = name[len(FILE_PREFIX) :].split(":", 3)
            want = (int(ino), int(size), int(mtime))
        except ValueError:
            raise SourceError(f"bad file source name {name!r}") from None
        try:
            source = cls(path)
        except OSError as exc:
            raise SourceError(f"{path}: {exc.strerror}") from exc
        st = os.fstat(source._fd)
        if (st.st_ino, st.st_size, st.st_mtime_ns) != want:
            source.close()
            raise SourceError(f"{path} changed since it was sent from")
        return source


class SourceRegistry:
    """Resolves source names for restores: registered sources, then files."""

    def __init__(self, sources: Iterable[Source] = ()) -> None:
        self._named: dict[str, Source] = {}
        for source in sources:
            if not isinstance(source, Source):
                raise TypeError(f"{source!r} is not a Source (needs .name and .read)")
            self._named[source.name] = source

    def resolve(self, name: str) -> Source:
        """Raises ``SourceError`` when ``name`` cannot be resolved."""
        source = self._named.get(name)
        if source is None:
            if not name.startswith(FILE_PREFIX):
                raise SourceError(f"no source named {name!r}: pass it to open_stack(sources=[...])")
            source = self._named[name] = FileSource.reopen(name)
        return source

    def read(self, name: str, offset: int, size: int) -> bytes:
        """Exactly ``size`` bytes of ``name`` from ``offset`` (``SourceError`` if short)."""
        source = self.resolve(name)
        parts: list[bytes] = []
        got = 0
        while got < size:
            data = source.read(offset + got, size - got)
            if not data:
                raise SourceError(f"source {name!r} ends at {offset + got}, {size - got} short")
            parts.append(data)
            got += len(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)
