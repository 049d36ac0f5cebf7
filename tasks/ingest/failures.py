"""A failed input file, as an error that crosses Dask and names the file.

What a reader raises can be anything: a ``RecursionError`` a thousand frames deep, an exception
holding a parser or an open file. Crossing Dask (and Prefect's task states) that once failed to
serialise, so the stage died with ``Could not serialize object of type State`` and no file named.
:func:`file_failure` turns it into plain data (message, source, file, original type), keeping the
original as ``__cause__`` on the worker, where the retry policy reads it, and choosing the class so
that :func:`m3.stage.classify_failure` still tells bad data, a flaky network and lack of memory
apart once the cause is gone.
"""

from __future__ import annotations

from m3.stage import classify_failure

MAX_MESSAGE = 500  # characters of the original message kept


class FileFailed(RuntimeError):
    """Reading one input file failed: ``str()`` is ``SOURCE/FILE: Type: message``."""

    def __init__(self, message: str, source: str = "", file: str = "", cause_type: str = ""):
        super().__init__(message)
        self.source, self.file, self.cause_type = source, file, cause_type

    def __reduce__(self):  # the four strings only, whatever the subclass's other bases
        return (type(self), (str(self), self.source, self.file, self.cause_type))


class FileDataFailed(FileFailed, ValueError):
    """The file's bytes are what failed: the same input fails again, so it is not retried."""


class FileTransientFailed(FileFailed, ConnectionError):
    """A network or storage hiccup while reading the file: worth a retry."""


class FileOutOfMemory(FileFailed, MemoryError):
    """The worker ran out of memory on the file."""


_BY_KIND: dict[str, type[FileFailed]] = {
    "data": FileDataFailed,
    "transient": FileTransientFailed,
    "oom": FileOutOfMemory,
}


def file_failure(exc: BaseException, source: str, file: str) -> FileFailed:
    """``exc``, raised while reading ``file`` of ``source``, as a :class:`FileFailed` of its kind."""
    detail = str(exc)
    if len(detail) > MAX_MESSAGE:
        detail = detail[:MAX_MESSAGE] + "…"
    name = type(exc).__name__
    cls = _BY_KIND.get(classify_failure(exc), FileFailed)
    message = f"{source}/{file}: {name}: {detail}" if detail else f"{source}/{file}: {name}"
    return cls(message, source, file, name)
