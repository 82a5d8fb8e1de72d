"""Test-only launcher: ``portal run`` with SIGKILL traps at chosen points of an upload.

Run as ``python crash_launcher.py run --port P --workers 1`` (the arguments are those of
``portal run``). Before handing over to ``portal.cli.main()`` it wraps:

- ``portal.storage.IncomingFile.write``  (trap ``write``: writing the temporary file),
- ``os.fsync``                           (``fsync-file`` or ``fsync-dir``, told apart by fstat),
- ``os.rename``                          (``rename``: the move into place),
- SQLAlchemy's session ``after_flush``    (``flush``: the row is sent, not committed),
- the engine's ``commit`` event           (``commit`` ``before``: just before the DBAPI COMMIT),
- the session's ``after_commit`` event    (``commit`` ``after``: committed, not yet answered).

A trap fires only inside an upload request (``manage.upload`` or
``manage.replace_document_file``) that carries the header ``X-Crash-Point: NAME:WHEN:N``
(WHEN is ``before`` or ``after`` the call, N counts the calls of that request, from 1): the
N-th such call of that request sends SIGKILL to its own process. Gunicorn forks its workers
after this module patched the functions, so the worker that handles the upload is the one
that dies; the harness then kills the rest of the process group or lets gunicorn's master
start a new worker. Any other request, and the server's own start-up, run unchanged.
"""

from __future__ import annotations

import os
import signal
import stat
import sys
from typing import Any

import flask
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

import portal.cli
import portal.storage
from portal.security import UPLOAD_ENDPOINTS

HEADER = "X-Crash-Point"
NAMES = ("write", "fsync-file", "fsync-dir", "rename", "flush", "commit")


def _wanted() -> tuple[str, str, int] | None:
    if not flask.has_request_context():
        return None
    request = flask.request
    if request.endpoint not in UPLOAD_ENDPOINTS:
        return None
    raw = request.headers.get(HEADER, "")
    parts = raw.split(":")
    if len(parts) != 3 or parts[0] not in NAMES or parts[1] not in ("before", "after"):
        return None
    return parts[0], parts[1], int(parts[2])


def trap(name: str, when: str) -> None:
    """Kill this process if this is the call the request's header chose."""
    wanted = _wanted()
    if wanted is None or wanted[0] != name or wanted[1] != when:
        return
    counts = flask.g.setdefault("crash_counts", {})
    counts[name, when] = counts.get((name, when), 0) + 1
    if counts[name, when] == wanted[2]:
        os.kill(os.getpid(), signal.SIGKILL)


def install() -> None:
    """Wrap the functions and listen to the events listed in the module's docstring."""
    original_write = portal.storage.IncomingFile.write

    def write(self: portal.storage.IncomingFile, data: bytes) -> int:
        trap("write", "before")
        written = original_write(self, data)
        trap("write", "after")
        return written

    portal.storage.IncomingFile.write = write  # type: ignore[method-assign]

    original_fsync = os.fsync

    def fsync(fd: Any) -> None:
        number = fd if isinstance(fd, int) else fd.fileno()
        name = "fsync-dir" if stat.S_ISDIR(os.fstat(number).st_mode) else "fsync-file"
        trap(name, "before")
        original_fsync(fd)
        trap(name, "after")

    os.fsync = fsync

    original_rename = os.rename

    def rename(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        trap("rename", "before")
        original_rename(src, dst, *args, **kwargs)
        trap("rename", "after")

    os.rename = rename

    event.listen(Session, "after_flush", lambda session, context: trap("flush", "after"))
    event.listen(Engine, "commit", lambda connection: trap("commit", "before"))
    event.listen(Session, "after_commit", lambda session: trap("commit", "after"))


def main() -> None:
    install()
    sys.argv = ["portal", *sys.argv[1:]]
    portal.cli.main()


if __name__ == "__main__":
    main()
