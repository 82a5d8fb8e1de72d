"""Write a file from a thread of its own, so that the disk works while the request reads on.

An upload's request thread reads the body, parses it and hashes it; writing each piece
itself, it left the disk idle while it parsed and the CPU idle while the disk wrote, and a
1 GiB upload took the sum of both (``bench/run.py`` W4). Pieces are handed to a writing
thread through a short queue instead, which bounds the memory an upload holds to a few
megabytes. A write that fails is kept and raised to the request thread at its next call.
"""

from __future__ import annotations

import queue
import threading
from typing import IO

#: Pieces waiting for the disk: with pieces of about 1 MiB, at most this many MiB per upload.
QUEUE_LENGTH = 4


class BackgroundWriter:
    """Append what ``put`` receives to ``file``, in order, from one daemon thread."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=QUEUE_LENGTH)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="upload-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            data = self._queue.get()
            try:
                if data is None:
                    return
                if self._error is None:
                    self._file.write(data)
            except BaseException as error:  # noqa: BLE001 - handed to the request thread
                self._error = error
            finally:
                self._queue.task_done()

    def check(self) -> None:
        """Raise the error of a write that failed, if one did."""
        if self._error is not None:
            raise self._error

    def put(self, data: bytes) -> None:
        """Queue ``data`` behind what is already queued (waits while the queue is full)."""
        self.check()
        self._queue.put(data)

    def drain(self) -> None:
        """Wait until everything queued is written, then raise a failed write's error."""
        self._queue.join()
        self.check()

    def stop(self) -> None:
        """Let the thread end once the queue is empty; wait for it."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
