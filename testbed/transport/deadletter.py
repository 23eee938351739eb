"""Dead letters: the messages a process received and could not handle, set aside for an operator.

A consumer acknowledges every message, even one it cannot handle: otherwise a persistent session
(the DMS's, on the data centre's broker) delivers the same poison after every restart, for as long
as the session lives (issue 11). What it could not handle is recorded instead, one JSON line per
message, appended to the process's dead-letter file: when (``time``, ``time_ns``), where
(``receiver``, ``topic``), from whom (``mrid``: the topic's, the publisher of a status or reading
and the target of a command; ``source``: what the payload claims, if it can be read), ``reason``,
``size``, ``sha256`` and the first :data:`HEAD_BYTES` bytes (``head``, escaped), never the whole
payload. A file stops growing at :data:`MAX_FILE_BYTES`: it becomes ``<file>.1`` (replacing the
previous one) and a new file starts, so a flood keeps the newest records in bounded space.

Where: ``FMB_DEADLETTERS`` if set; else beside the process's ready file (``FMB_READY_FILE``) as
``<FMB_DEVICE_ID>.deadletters.jsonl``: ``<state>/run/`` on the local bus (``fmb deadletters``
lists them), ``/run/fmb/`` inside a Compose container; else nowhere (logged and counted only).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["FILE_SUFFIX", "HEAD_BYTES", "MAX_FILE_BYTES", "DeadLetterBox", "claimed_source", "dead_letter",
           "process_box", "read_dead_letters", "topic_mrid"]

FILE_SUFFIX = ".deadletters.jsonl"
HEAD_BYTES = 256  # enough to recognise a payload; a record stays under ~2 KB whatever was sent
MAX_FILE_BYTES = 1 << 20  # per generation; two generations per process

_SOURCE = re.compile(rb'"source"\s*:\s*"([^"\\]{1,64})"')


def topic_mrid(topic: str) -> str:
    """The mRID a topic of the tree names (its last level), or ``?``."""
    last = topic.rsplit("/", 1)[-1]
    return last[:64] if last and topic.count("/") == 3 else "?"


def claimed_source(payload: bytes | bytearray) -> str | None:
    """The ``source`` a payload claims, read without parsing it (it may be anything), or None."""
    m = _SOURCE.search(payload[:4096])
    return m.group(1).decode("utf-8", "replace") if m else None


def dead_letter(topic: str, payload: bytes | bytearray, reason: str, receiver: str) -> dict[str, Any]:
    """The record of one message ``receiver`` could not handle."""
    now = time.time_ns()
    return {
        "time": dt.datetime.fromtimestamp(now / 1e9, dt.UTC).isoformat(timespec="milliseconds"),
        "time_ns": now, "receiver": receiver, "topic": topic[:256], "mrid": topic_mrid(topic),
        "source": claimed_source(payload), "reason": reason[:500], "size": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
        "head": payload[:HEAD_BYTES].decode("utf-8", "backslashreplace"),
    }


class DeadLetterBox:
    """One process's dead-letter file (or none: ``path`` None); thread-safe, size-bounded."""

    def __init__(self, path: Path | None, max_bytes: int = MAX_FILE_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.count = 0  # recorded by this process since it started (also when there is no file)
        self._lock = threading.Lock()

    def add(self, record: Mapping[str, Any]) -> None:
        """Append ``record``; an unwritable file is no reason to fail the consumer (the log has it)."""
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            self.count += 1
            if self.path is None:
                return
            try:
                if self.path.exists() and self.path.stat().st_size + len(line) > self.max_bytes:
                    self.path.replace(self.path.with_name(self.path.name + ".1"))
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, line.encode())
                finally:
                    os.close(fd)
            except OSError:
                pass


_box: DeadLetterBox | None = None
_box_lock = threading.Lock()


def process_box(env: Mapping[str, str] | None = None) -> DeadLetterBox:
    """This process's box, located (once) from its environment as the module docstring says."""
    global _box
    with _box_lock:
        if _box is None:
            env = os.environ if env is None else env
            path = None
            if env.get("FMB_DEADLETTERS"):
                path = Path(env["FMB_DEADLETTERS"])
            elif env.get("FMB_READY_FILE"):
                ready = Path(env["FMB_READY_FILE"])
                path = ready.parent / f"{env.get('FMB_DEVICE_ID') or ready.stem}{FILE_SUFFIX}"
            _box = DeadLetterBox(path)
        return _box


def read_dead_letters(directory: Path) -> Iterator[dict[str, Any]]:
    """Every dead letter recorded in ``directory``, oldest file generation first; unreadable lines skipped."""
    files = sorted(directory.glob(f"*{FILE_SUFFIX}.1")) + sorted(directory.glob(f"*{FILE_SUFFIX}"))
    for path in files:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record
