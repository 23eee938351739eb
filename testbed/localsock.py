"""Unix sockets only their owner can use: the bus's local control channels.

The feeder model's physics, the tablet's operator input and the Compose runner's run requests
travel on Unix sockets, not on the network. Each is created under a umask of 077, so the socket
file is the owner's alone from the moment ``bind`` makes it (a ``chmod`` afterwards would leave a
window in which another user could connect).
"""

from __future__ import annotations

import os
import socketserver
from pathlib import Path

__all__ = ["private_unix_server"]


_Server = socketserver.ThreadingUnixStreamServer


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
