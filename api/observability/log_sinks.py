"""Where log lines go: one writer thread per sink, each with its own bounded queue.

A sink that blocks (a stdout pipe nobody reads: a stalled container log driver) holds up only
its own thread: the files keep every line. A sink that falls MAX_QUEUED_LINES behind drops
what it cannot take instead of growing the process, counts it in
`log_lines_dropped_total{sink}`, and says so on the other sinks: one warning when dropping
starts, one when the sink takes lines again.

Each writer gathers lines for a few milliseconds and appends each batch of whole lines with a
single write() on an O_APPEND descriptor, so several worker processes can share one file, and
reopens a file that was moved or deleted (logrotate with `create`) or when asked to (SIGHUP).
"""

import json
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from api.observability import metrics

# Per sink: about 5 MB of typical lines (~500 bytes), some seconds of the heaviest load.
MAX_QUEUED_LINES = 10_000
# A writer wakes at most this often under load, and writes at most this many lines at once.
BATCH_SECONDS = 0.01
BATCH_LINES = 1000
# At shutdown a line is written in the thread that logs it; a sink still stuck in a write
# after this long gets its lines dropped, so that the process can end.
DIRECT_WRITE_WAIT_SECONDS = 0.1

_STOP = object()
_REOPEN = object()


class LogFile:
    """Appends lines to one file, reopening it when it was moved or deleted, or after close()."""

    def __init__(self, path: Path, accepts: Callable[[str], bool]) -> None:
        self.path = path
        self.label = path.name
        self.accepts = accepts
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None

    def write(self, data: bytes) -> None:
        if self._fd is None or self._moved():
            self._open()
        assert self._fd is not None
        while data:
            data = data[os.write(self._fd, data):]

    def _moved(self) -> bool:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return True
        return (stat.st_dev, stat.st_ino) != self._identity

    def _open(self) -> None:
        self.close()
        # 0640 as in the guide's logrotate `create 0640`.
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        stat = os.fstat(self._fd)
        self._identity = (stat.st_dev, stat.st_ino)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class LogStream:
    """Every line to a text stream (stdout)."""

    label = "stdout"

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def accepts(self, name: str) -> bool:
        return True

    def write(self, data: bytes) -> None:
        self.stream.write(data.decode())
        self.stream.flush()

    def close(self) -> None:
        pass


Sink = LogFile | LogStream


class SinkWriter(threading.Thread):
    """The only thread that writes one sink, until `write_directly()`."""

    def __init__(self, sink: Sink) -> None:
        super().__init__(name=f"log-writer-{sink.label}", daemon=True)
        self.sink = sink
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.direct = False
        self.lock = threading.Lock()  # held while writing
        self._switching = threading.Lock()  # held only to read or flip `direct`: never blocks
        self.dropped = 0  # lines dropped since dropping started; 0 while the sink keeps up

    def offer(self, data: bytes) -> bool:
        """Queue (or, after write_directly, write) a line; False when it was dropped."""
        with self._switching:
            if not self.direct:
                # qsize is exact for SimpleQueue and costs no lock of its own.
                if self.queue.qsize() >= MAX_QUEUED_LINES:
                    return False
                self.queue.put_nowait(data)
                return True
        if not self.lock.acquire(timeout=DIRECT_WRITE_WAIT_SECONDS):
            return False
        try:
            self._write(data)
        finally:
            self.lock.release()
        return True

    def reopen(self) -> None:
        self.queue.put_nowait(_REOPEN)

    def run(self) -> None:
        while True:
            batch = [self.queue.get()]
            # Let lines gather, then write them together: waking for every line would take the
            # GIL from the event loop once per request.
            time.sleep(BATCH_SECONDS)
            while len(batch) < BATCH_LINES:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            with self.lock:
                if not self._handle_batch(batch):
                    return

    def _handle_batch(self, batch: list[Any]) -> bool:
        """Write the lines with one write; False once _STOP was among them."""
        pending: list[bytes] = []
        for item in batch:
            if item is _STOP or item is _REOPEN:
                self._write(b"".join(pending))
                pending = []
                if item is _STOP:
                    return False
                self.sink.close()
            else:
                pending.append(item)
        self._write(b"".join(pending))
        return True

    def _write(self, data: bytes) -> None:
        if not data:
            return
        try:
            self.sink.write(data)
        except OSError as exc:
            # Nowhere left to log to: say so on stderr, still as JSON.
            sys.stderr.write(json.dumps({"level": "ERROR", "logger": __name__,
                                         "message": f"Cannot write log line: {exc}"}) + "\n")

    def write_directly(self, deadline: float) -> None:
        """Drain the queue (until `deadline`, on time.monotonic), then write each later line in
        the thread that logs it."""
        with self._switching:
            if self.direct:
                return
            # Every earlier line is queued before _STOP, and the thread writes it.
            self.direct = True
            self.queue.put_nowait(_STOP)
        self.join(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        if self.lock.acquire(timeout=DIRECT_WRITE_WAIT_SECONDS):
            try:
                self.sink.close()
            finally:
                self.lock.release()


class Fanout:
    """Hands each line to the writers whose sink takes its logger; the QueueHandler's queue
    (`put_nowait`)."""

    def __init__(self, sinks: list[Sink], notice: Callable[[str, str, dict[str, Any]], bytes]) -> None:
        """`notice(level, message, fields)` formats this module's own warning lines."""
        self.writers = [SinkWriter(sink) for sink in sinks]
        for sink in sinks:
            metrics.expose_log_sink(sink=sink.label)
        self._notice = notice
        self._dropping = threading.Lock()  # taken only when a sink starts or stops dropping

    def start(self) -> None:
        for writer in self.writers:
            writer.start()

    def put_nowait(self, item: tuple[str, bytes]) -> None:
        name, data = item
        for writer in self.writers:
            if writer.sink.accepts(name):
                if not writer.offer(data):
                    self._drop(writer)
                elif writer.dropped:
                    self._recovered(writer)

    def _drop(self, writer: SinkWriter) -> None:
        metrics.record_log_lines_dropped(sink=writer.sink.label)
        with self._dropping:
            writer.dropped += 1
            started = writer.dropped == 1
        if started:
            self._tell_others(writer, "WARNING", f"Log sink {writer.sink.label} is full: dropping lines",
                              {"sink": writer.sink.label, "queued_lines": MAX_QUEUED_LINES})

    def _recovered(self, writer: SinkWriter) -> None:
        with self._dropping:
            dropped, writer.dropped = writer.dropped, 0
        if dropped:
            self._tell_others(None, "WARNING", f"Log sink {writer.sink.label} takes lines again",
                              {"sink": writer.sink.label, "dropped_lines": dropped})

    def _tell_others(self, full: SinkWriter | None, level: str, message: str,
                     fields: dict[str, Any]) -> None:
        line = self._notice(level, message, fields)
        for writer in self.writers:
            if writer is not full:
                writer.offer(line)

    def reopen(self) -> None:
        for writer in self.writers:
            writer.reopen()

    def write_directly(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for writer in self.writers:
            writer.write_directly(deadline)

    def stop(self, timeout: float) -> None:
        self.write_directly(timeout)
        for writer in self.writers:
            writer.close()
