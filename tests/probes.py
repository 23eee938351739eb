"""Low-level probes of a broker's listener: raw MQTT over a socket we control."""

from __future__ import annotations

import socket
import ssl
import struct
from pathlib import Path


def mqtt5_connect_packet(client_id: str) -> bytes:
    """A minimal MQTT v5 CONNECT (clean start, keep-alive 60 s, no properties)."""
    cid = client_id.encode()
    variable = b"\x00\x04MQTT\x05\x02\x00\x3c\x00"
    payload = struct.pack("!H", len(cid)) + cid
    body = variable + payload
    return b"\x10" + bytes([len(body)]) + body


def try_mqtt(port: int, context: ssl.SSLContext | None, client_id: str = "probe") -> str:
    """Connect to 127.0.0.1:port (TLS if ``context``), send CONNECT; what came back.

    Returns "connack" (accepted: CONNACK with reason 0), or why it was refused.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        sock: socket.socket = raw
        try:
            if context is not None:
                sock = context.wrap_socket(raw, server_hostname="localhost")
            sock.sendall(mqtt5_connect_packet(client_id))
            reply = sock.recv(64)
        except ssl.SSLError as e:
            return f"tls error: {e.reason or e}"
        except (ConnectionResetError, BrokenPipeError, TimeoutError, OSError) as e:
            return f"connection error: {e}"
        if not reply:
            return "closed without reply"
        if reply[0] == 0x20 and len(reply) >= 4 and reply[3] == 0:
            return "connack"
        return f"refused: {reply[:8].hex()}"


def client_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx
