"""Mosquitto's log as a stream of security events, from wherever the log lives.

A :class:`LogSource` yields ``(source, line)`` pairs: :class:`FileLogSource` tails the log files
of the local backend (replaying what is already there first, so the monitor rebuilds who is
connected and subscribed), :class:`CommandLogSource` reads the output of a command such as
``docker logs -f NAME`` for a container backend. :func:`log_sources` builds them from specs
(``file:/path`` or ``cmd:docker logs -f fmb-field-delivery-1``).

:class:`BrokerLogParser` turns the lines of one broker (Mosquitto 2.0, ``log_type`` notice,
information, subscribe, unsubscribe and, where enabled, debug) into :class:`BrokerEvent` objects.
Mosquitto names the source address only on the "New connection from" line: a TLS failure that
follows is attributed to the latest connection of that broker that has not yet become a client,
which is exact for a broker handling one handshake at a time and a close guess otherwise.
Device logs give two: an actuator rejecting a command, and a device rejecting a payload (one that
does not decode, or whose handler failed) (``devices.base``, ``testbed.transport.guard``).
"""

from __future__ import annotations

import contextlib
import re
import shlex
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, Queue
from typing import Any, Protocol

__all__ = [
    "BrokerEvent",
    "BrokerLogParser",
    "CommandLogSource",
    "FileLogSource",
    "LogSource",
    "device_log_event",
    "log_sources",
]


@dataclass(frozen=True)
class BrokerEvent:
    """One security-relevant fact from a log line."""

    kind: str  # connection, tls_failure, connected, disconnected, evicted, malformed, denied,
    #            oversize, subscribe, unsubscribe, restarted, command_rejected, payload_rejected
    source: str  # broker (or device) whose log said it
    time_ns: int  # when the monitor read it (the log's own stamps have one-second resolution)
    line: str
    client_id: str | None = None
    identity: str | None = None  # certificate CN (Mosquitto's username)
    address: str | None = None  # source IP
    detail: dict[str, Any] = field(default_factory=dict)
    replay: bool = False  # read from the log as it was when the monitor started


_STAMP = re.compile(r"^(?:\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d|\d{9,}): ")
_RULES: list[tuple[str, re.Pattern[str]]] = [(k, re.compile(p)) for k, p in (
    ("connection", r"^New connection from (?P<addr>\S+):(?P<port>\d+) on port \d+\.$"),
    ("connected", r"^New client connected from (?P<addr>\S+):(?P<port>\d+) as (?P<cid>\S+) "
                  r"\(p(?P<proto>\d), c(?P<clean>\d), k(?P<keepalive>\d+)(?:, u'(?P<user>[^']*)')?\)\.$"),
    ("tls_error", r"^OpenSSL Error\[\d+\]: error:[0-9A-Fa-f]+:SSL routines::(?P<reason>.*)$"),
    ("conn_failed", r"^Client connection from (?P<addr>\S+) failed: (?:error:[0-9A-Fa-f]+:SSL routines::)?"
                    r"(?P<reason>.*?)\.?$"),
    ("unknown_gone", r"^Client <unknown> disconnected(?::|,) ?(?P<reason>.*?)\.?$"),
    ("clean", r"^Client (?P<cid>\S+) disconnected\.$"),
    ("closed", r"^Client (?P<cid>\S+) closed its connection\.$"),
    ("timeout", r"^Client (?P<cid>\S+) has exceeded timeout, disconnecting\.$"),
    ("evicted", r"^Client (?P<cid>\S+) been disconnected by administrative action\.$"),
    ("due_to", r"^Client (?P<cid>\S+) disconnected due to (?P<reason>.*?)\.$"),
    ("reason", r"^Client (?P<cid>\S+) disconnected(?::|,) (?P<reason>.*?)\.?$"),
    ("invalid", r"^Invalid (?P<what>.*) in (?P<packet>\w+) from (?P<cid>\S+), disconnecting\.$"),
    ("denied", r"^Denied (?P<packet>PUBLISH|SUBSCRIBE) from (?P<cid>\S+) \(.*?'(?P<topic>.*)', \.\.\. "
               r"\((?P<bytes>\d+) bytes\)\)$"),
    ("oversize", r"^Dropped too large PUBLISH from (?P<cid>\S+) \(.*?'(?P<topic>.*)', \.\.\. "
                 r"\((?P<bytes>\d+) bytes\)\)$"),
    ("restarted", r"^mosquitto version \S+ starting$"),
    ("subscribe", r"^(?P<cid>\S+) (?P<qos>[0-2]) (?P<filter>\S+)$"),
    ("unsubscribe", r"^(?P<cid>\S+) (?P<filter>\S+)$"),
)]
_REJECTED = re.compile(r"rejected command on (?P<topic>\S+): (?P<reason>.*) \(rejected commands so far: (?P<n>\d+)\)")
_CLAIMED = re.compile(r"(?:signer|claiming to be|from) '(?P<who>[^']+)'")
# A payload a device could not take: refused by its checks, or its handler failed (contained).
_PAYLOAD = re.compile(r"(?:rejected payload on|handling a message on) (?P<topic>\S+?):? (?P<rest>.*)$")
_PAYLOAD_SOURCE = re.compile(r"payload source '(?P<who>[^']+)'")


class BrokerLogParser:
    """Turns one broker's log lines into events, keeping who each client id is."""

    def __init__(self, broker: str) -> None:
        self.broker = broker
        self.clients: dict[str, tuple[str | None, str, bool]] = {}  # cid -> (identity, address, clean start)
        self._pending: str | None = None  # address of the last connection that is not a client yet

    def parse(self, line: str, now_ns: int | None = None, replay: bool = False) -> BrokerEvent | None:
        text = _STAMP.sub("", line.rstrip("\n"))
        now = now_ns if now_ns is not None else time.time_ns()
        for rule, pattern in _RULES:
            m = pattern.match(text)
            if m:
                return self._event(rule, m.groupdict(), text, now, replay)
        return None

    def _event(self, rule: str, g: dict[str, Any], text: str, now: int, replay: bool) -> BrokerEvent | None:
        def make(kind: str, cid: str | None = None, **detail: Any) -> BrokerEvent:
            ident, addr = None, None
            if cid is not None and cid in self.clients:
                ident, addr, _ = self.clients[cid]
            return BrokerEvent(kind, self.broker, now, text, cid, ident, detail.pop("address", addr), detail,
                               replay)

        if rule == "connection":
            self._pending = g["addr"]
            return make("connection", address=g["addr"])
        if rule == "connected":
            self._pending = None
            self.clients[g["cid"]] = (g["user"], g["addr"], g["clean"] == "1")
            return make("connected", g["cid"], keepalive_s=int(g["keepalive"]), clean_start=g["clean"] == "1")
        if rule == "tls_error":
            if "unexpected eof" in g["reason"] or self._pending is None:
                return None  # the client went away (reported on the next line), or not a handshake
            addr, self._pending = self._pending, None
            return make("tls_failure", address=addr, reason=g["reason"])
        if rule == "conn_failed":  # Mosquitto logs no "New connection" line for these: count the attempt here
            self._pending = None
            return make("tls_failure", address=g["addr"], reason=g["reason"], attempt=True)
        if rule == "unknown_gone":
            if self._pending is None:
                return None  # already reported by the OpenSSL error line before it
            addr, self._pending = self._pending, None
            return make("tls_failure", address=addr, reason=g["reason"] or "disconnected before CONNECT")
        if rule == "restarted":
            self.clients.clear()
            self._pending = None
            return make("restarted")
        if rule in ("clean", "closed", "timeout", "evicted", "due_to", "reason"):
            cid = g["cid"]
            why = {"clean": "DISCONNECT", "closed": "socket closed without DISCONNECT",
                   "timeout": "keepalive timeout", "evicted": "evicted by administrative action"}.get(
                       rule, g.get("reason", ""))
            event = make("evicted" if rule == "evicted" else "disconnected", cid, clean=rule == "clean",
                         reason=why, malformed=rule == "due_to" and why in ("malformed packet", "protocol error"))
            self.clients.pop(cid, None)
            return event
        if rule == "invalid":
            return make("malformed", g["cid"], reason=f"invalid {g['what']} in {g['packet']}")
        if rule in ("denied", "oversize"):
            return make(rule, g["cid"], packet=g.get("packet", "PUBLISH"), topic=g["topic"], bytes=int(g["bytes"]))
        if rule == "subscribe" and g["cid"] in self.clients:
            return make("subscribe", g["cid"], filter=g["filter"], qos=int(g["qos"]))
        if rule == "unsubscribe" and g["cid"] in self.clients:
            return make("unsubscribe", g["cid"], filter=g["filter"])
        return None


def device_log_event(device: str, line: str, now_ns: int | None = None, replay: bool = False) -> BrokerEvent | None:
    """The event of one device log line: an actuator's rejected command, a rejected payload, else None."""
    m = _REJECTED.search(line)
    if not m:
        return _payload_event(device, line, now_ns, replay)
    claimed = _CLAIMED.search(m["reason"])
    return BrokerEvent("command_rejected", device, now_ns if now_ns is not None else time.time_ns(), line.strip(),
                       identity=claimed["who"] if claimed else None,
                       detail={"actuator": device, "topic": m["topic"], "reason": m["reason"],
                               "rejected_so_far": int(m["n"])}, replay=replay)


def _payload_event(device: str, line: str, now_ns: int | None, replay: bool) -> BrokerEvent | None:
    m = _PAYLOAD.search(line)
    if not m:
        return None
    claimed = _PAYLOAD_SOURCE.search(m["rest"])
    # Who sent it is the detector's to decide (it knows which topics authenticate their publisher).
    return BrokerEvent("payload_rejected", device, now_ns if now_ns is not None else time.time_ns(), line.strip(),
                       detail={"receiver": device, "topic": m["topic"], "reason": m["rest"].strip()[:300],
                               "claimed": claimed["who"] if claimed else None}, replay=replay)


class LogSource(Protocol):
    """Lines of one or more logs, as ``(source name, line, replay)``; ``("", "", False)`` marks the
    end of the replay of what the logs held at start."""

    def lines(self, stop: threading.Event) -> Iterator[tuple[str, str, bool]]: ...


class FileLogSource:
    """Tails log files (replaying their current content first); survives truncation."""

    def __init__(self, files: dict[str, Path], poll_s: float = 0.02) -> None:
        self.files = files
        self.poll_s = poll_s

    def lines(self, stop: threading.Event) -> Iterator[tuple[str, str, bool]]:
        offsets = dict.fromkeys(self.files, 0)
        partial = dict.fromkeys(self.files, b"")
        replay = True
        while not stop.is_set():
            got = False
            for name, path in self.files.items():
                try:
                    size = path.stat().st_size
                    if size < offsets[name]:
                        offsets[name], partial[name] = 0, b""
                    if size == offsets[name]:
                        continue
                    with open(path, "rb") as f:
                        f.seek(offsets[name])
                        data = partial[name] + f.read(size - offsets[name])
                        offsets[name] = size
                except OSError:
                    continue
                *complete, partial[name] = data.split(b"\n")
                for raw in complete:
                    got = True
                    yield name, raw.decode("utf-8", "replace"), replay
            if replay:
                yield "", "", False  # the end of what was there at start: the rest is live
            replay = False
            if not got:
                stop.wait(self.poll_s)


class CommandLogSource:
    """Reads the output of one command per source, e.g. ``docker logs -f --since 0s NAME``."""

    def __init__(self, commands: dict[str, list[str]]) -> None:
        self.commands = commands

    def lines(self, stop: threading.Event) -> Iterator[tuple[str, str, bool]]:
        queue: Queue[tuple[str, str]] = Queue()
        procs = []

        def pump(name: str, proc: subprocess.Popen[bytes]) -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                queue.put((name, raw.decode("utf-8", "replace")))

        for name, argv in self.commands.items():
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            procs.append(proc)
            threading.Thread(target=pump, args=(name, proc), daemon=True).start()
        try:
            while not stop.is_set():
                try:
                    name, line = queue.get(timeout=0.2)
                except Empty:
                    continue
                yield name, line, False
        finally:
            for proc in procs:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()


def log_sources(specs: dict[str, str]) -> list[LogSource]:
    """Sources from ``{name: "file:/path" | "cmd:shell words"}`` (files tailed by one poller)."""
    files = {n: Path(s[5:]) for n, s in specs.items() if s.startswith("file:")}
    commands = {n: shlex.split(s[4:]) for n, s in specs.items() if s.startswith("cmd:")}
    bad = set(specs) - set(files) - set(commands)
    if bad:
        raise ValueError(f"log source {sorted(bad)[0]!r} is {specs[sorted(bad)[0]]!r}: use file:/path or cmd:COMMAND")
    out: list[LogSource] = []
    if files:
        out.append(FileLogSource(files))
    if commands:
        out.append(CommandLogSource(commands))
    return out
