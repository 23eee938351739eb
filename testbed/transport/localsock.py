"""Unix sockets only their owner can use: the bus's local control channels.

The feeder model's physics, the tablet's operator input and the Compose runner's run requests
travel on Unix sockets, not on the network. Each is created under a umask of 077, so the socket
file is the owner's alone from the moment ``bind`` makes it (a ``chmod`` afterwards would leave a
window in which another user could connect).
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
from pathlib import Path
from typing import Any, TypeVar, overload

__all__ = ["private_unix_server", "unix_request"]


_Server = socketserver.ThreadingUnixStreamServer
_S = TypeVar("_S", bound=_Server)


@overload
def private_unix_server(path: Path, handler: type[socketserver.BaseRequestHandler]) -> _Server: ...
@overload
def private_unix_server(path: Path, handler: type[socketserver.BaseRequestHandler], server_class: type[_S]) -> _S: ...
def private_unix_server(path: Path, handler: type[socketserver.BaseRequestHandler],
                        server_class: type[_Server] = _Server) -> _Server:
    """A threading Unix-socket server at ``path`` (replacing a stale socket file), mode 0600."""
    path.unlink(missing_ok=True)
    old = os.umask(0o077)
    try:
        server = server_class(str(path), handler)
    finally:
        os.umask(old)
    server.daemon_threads = True
    return server


def unix_request(path: Path, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Send one JSON line to the server at ``path`` and return its one-line JSON reply ({} if none).

    Raises ``OSError`` if the server cannot be reached or does not answer in ``timeout_s``, and
    ``ValueError`` if the reply is not JSON."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(str(path))
        s.sendall(json.dumps(request).encode() + b"\n")
        reply: dict[str, Any] = json.loads(s.makefile("rb").readline() or b"{}")
        return reply
