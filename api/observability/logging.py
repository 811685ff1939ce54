"""JSON log lines, with secrets masked, to the files the operator's guide names (and stdout).

Every record becomes one JSON object in the thread that logged it (only there are its context
variables and arguments right), then goes through a bounded queue per sink to that sink's
writer thread (`api.observability.log_sinks`), so a slow disk never blocks the event loop and
a blocked sink never stops the others.
"""

import atexit
import json
import logging
import sys
import threading
import time
from collections.abc import Iterable
from logging.handlers import QueueHandler
from typing import Any

from api.config import Settings
from api.core.clock import iso_timestamp
from api.core.context import current_context
from api.core.redaction import redact, redact_text
from api.observability.audit import AUDIT_LOGGER
from api.observability.log_sinks import Fanout, LogFile, LogStream, Sink

ACCESS_LOGGER = "api.access"

# Attributes every LogRecord has; anything else on a record came from `extra`. uvicorn's
# `color_message` repeats the message with ANSI colours.
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {
    "message", "asctime", "taskName", "color_message",
}
_CORE_FIELDS = ("timestamp", "level", "logger", "message")

# Libraries whose DEBUG output is request dumps (botocore prints signed headers) or noise.
_QUIET_LOGGERS = ("botocore", "boto3", "urllib3", "s3transfer", "aiosqlite", "httpcore", "multipart",
                  "python_multipart")

# -- formatting --------------------------------------------------------------------------------
def _entry(created: float, level: str, logger: str, message: str,
           fields: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """A line's object: the guide's fields, the context, then `fields`, masked."""
    entry: dict[str, Any] = {"timestamp": iso_timestamp(created), "level": level, "logger": logger,
                             "message": redact_text(message)}
    entry.update(current_context())
    for key, value in fields:
        entry[key] = redact(key, value)
    return entry


def _dumps(entry: dict[str, Any]) -> str:
    return json.dumps(entry, default=str, ensure_ascii=False)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: the guide's fields, the context, the extras, the exception."""

    def format(self, record: logging.LogRecord) -> str:
        extras = ((key, value) for key, value in vars(record).items()
                  if key not in _RECORD_ATTRS and key not in _CORE_FIELDS)
        entry = _entry(record.created, record.levelname, record.name, record.getMessage(), extras)
        if record.exc_info and record.exc_info[0] is not None:
            entry["exception"] = redact_text(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = redact_text(record.stack_info)
        return _dumps(entry)


class _JsonQueueHandler(QueueHandler):
    def prepare(self, record: logging.LogRecord) -> tuple[str, bytes]:  # type: ignore[override]
        return record.name, (self.format(record) + "\n").encode()


_access_logger = logging.getLogger(ACCESS_LOGGER)


def log_access(**fields: Any) -> None:
    """Log one request's access line, `Request completed` on the `api.access` logger.

    Every request logs it, so it skips what `logging` would spend on it (a LogRecord, the
    handler lock, the generic field loop): about a third of the line's cost, measured in
    docs/PERFORMANCE.md (F2). The line is the one JsonFormatter would write: the guide's
    fields, the context, then `fields`, masked the same way; the logger's level still rules.
    """
    if _writer is None or not _access_logger.isEnabledFor(logging.INFO):
        return
    entry = _entry(time.time(), "INFO", ACCESS_LOGGER, "Request completed", fields.items())
    _writer.put_nowait((ACCESS_LOGGER, (_dumps(entry) + "\n").encode()))


_writer: Fanout | None = None
_handler: _JsonQueueHandler | None = None


def _notice(level: str, message: str, fields: dict[str, Any]) -> bytes:
    """A line of the log pipeline's own (a sink started or stopped dropping lines): without the
    context of the request that happened to log the line that tipped it."""
    entry = {"timestamp": iso_timestamp(time.time()), "level": level, "logger": __name__,
             "message": message, **fields}
    return (_dumps(entry) + "\n").encode()


def _sinks(settings: Settings) -> list[Sink]:
    log_dir = settings.log_dir
    log_dir.mkdir(parents=True, exist_ok=True)
    sinks: list[Sink]
    if settings.environment == "production":
        sinks = [
            LogFile(log_dir / "access.log", lambda name: name == ACCESS_LOGGER),
            LogFile(log_dir / "error.log", lambda name: name not in (ACCESS_LOGGER, AUDIT_LOGGER)),
        ]
    else:
        sinks = [LogFile(log_dir / "api.log", lambda name: name != AUDIT_LOGGER)]
    sinks.append(LogFile(log_dir / "audit.log", lambda name: name == AUDIT_LOGGER))
    if settings.log_stdout:
        sinks.append(LogStream(sys.stdout))
    return sinks


def configure_logging(settings: Settings) -> None:
    """Route every logger of the process to JSON lines; safe to call again with new settings."""
    global _writer, _handler
    # The lines never show a record's caller, thread or process fields: not computing them is
    # the standard library's documented saving (several microseconds per line).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    if _writer is not None:
        root.removeHandler(_handler)
        _writer.stop(timeout=5.0)
    _writer = Fanout(_sinks(settings), _notice)
    _writer.start()
    _handler = _JsonQueueHandler(_writer)  # type: ignore[arg-type]
    _handler.setFormatter(JsonFormatter())
    root.addHandler(_handler)
    root.setLevel(logging.DEBUG if settings.debug else settings.log_level)
    # The audit trail is written whatever LOG_LEVEL says, and only to audit.log (and stdout):
    # its own handler, no propagation to the root's (nor to a harness's handlers there).
    audit_logger = logging.getLogger(AUDIT_LOGGER)
    audit_logger.handlers = [_handler]
    audit_logger.propagate = False
    audit_logger.setLevel(logging.INFO)

    # uvicorn's own handlers (when it was started with its default log config) would print
    # plain text: its records go through ours instead. Its access line is replaced by the
    # tracing middleware's `Request completed`.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.setLevel(logging.NOTSET)
        uvicorn_logger.propagate = name != "uvicorn.access"
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(root.level, logging.WARNING))
    # Off then on: captures again even if something (a test harness) reset showwarning since.
    logging.captureWarnings(False)
    logging.captureWarnings(True)
    # Uncaught exceptions would print plain tracebacks; a harness's own hooks (pytest's) stay.
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = _log_uncaught
    if threading.excepthook is threading.__excepthook__:
        threading.excepthook = _log_uncaught_in_thread


def reopen_log_files() -> None:
    """Reopen every log file at its next line (logrotate moved them). For a SIGHUP handler
    installed with loop.add_signal_handler, which runs it as an ordinary callback."""
    if _writer is not None:
        _writer.reopen()


def write_logs_directly(timeout: float = 5.0) -> None:
    """At shutdown: write what is queued, then every later line as it is logged.

    uvicorn ends a signalled server by raising the signal again with its default action,
    which kills the process before atexit handlers run; a line still queued then is lost.
    """
    if _writer is not None:
        _writer.write_directly(timeout)


def _log_uncaught(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
    logging.getLogger("api").critical("Uncaught exception", exc_info=(exc_type, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is not SystemExit:
        logging.getLogger("api").critical(
            "Uncaught exception in thread", exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
            extra={"thread_name": args.thread.name if args.thread else None})


@atexit.register
def _drain_at_exit() -> None:
    # A process that exits without the app's shutdown (a CLI, a failed start) still writes
    # every line: atexit runs before daemon threads are stopped.
    if _writer is not None:
        _writer.stop(timeout=5.0)
