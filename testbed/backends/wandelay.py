"""The WAN link's propagation delay, in user space: an Ethernet forwarder that holds each frame ``D`` ms.

This kernel has no ``netem`` (nor ``fq``, so no BPF departure times): ``htb`` and ``tbf`` shape a
rate but cannot delay. This process runs inside the link's network namespace
(:mod:`testbed.backends.wanlink`) and joins its two interfaces at layer 2 with packet sockets:
each frame that arrives on one is sent out of the other ``D`` ms later, in arrival order. The
brokers' TCP connections therefore run end to end across the link and see its whole round trip,
and the frames then queue in the HTB FIFO of the outgoing interface as in a router's buffer
(frames sent from a packet socket are not held back by TCP Small Queues, as a relay's own TCP
stream into the shaper would be). Checksum and segmentation offload state travels with each
frame in a virtio-net header (``PACKET_VNET_HDR``), as for a VM's tap device.

The hold each frame really got (sent - arrived) is kept and written as JSON (``--stats FILE``)
when the forwarder ends (SIGTERM): the accuracy of the emulated delay on this loaded machine.

    python -m testbed.backends.wandelay --delay-ms 20 --stats stats.json IF_A IF_B
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import sys
import time
from collections import deque
from pathlib import Path

__all__ = ["main"]

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23  # Linux >= 4.20: our own sends are not read back
VNET_HDR_BYTES = 10
FRAME_MAX = 65536 + VNET_HDR_BYTES
# Frames held per direction: 10 Mbit/s x 200 ms is about 170 full frames. A real link's wire holds
# rate x delay; beyond this (a stall of this process) frames are dropped, and counted.
HELD_MAX_FRAMES = 4096


def _open(interface: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    sock.bind((interface, ETH_P_ALL))
    sock.setblocking(False)
    return sock


class _Direction:
    """Frames read from ``source``, sent out of ``sink`` ``delay_s`` after they arrived."""

    def __init__(self, name: str, source: socket.socket, sink: socket.socket, sink_name: str,
                 delay_s: float, holds: list[float]) -> None:
        self.name, self.source, self.sink, self.sink_name = name, source, sink, sink_name
        self.delay_s, self.holds = delay_s, holds
        self.queue: deque[tuple[float, bytes]] = deque()
        self.ready = asyncio.Event()
        self.frames = self.dropped = self.send_errors = 0

    def on_readable(self) -> None:
        now = time.monotonic()
        while True:
            try:
                frame = self.source.recv(FRAME_MAX)
            except (BlockingIOError, InterruptedError):
                break
            if len(self.queue) >= HELD_MAX_FRAMES:
                self.dropped += 1
                continue
            self.queue.append((now, frame))
            self.ready.set()

    async def forward(self) -> None:
        while True:
            if not self.queue:
                self.ready.clear()
                await self.ready.wait()
                continue
            arrived, frame = self.queue[0]
            wait = arrived + self.delay_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self.queue.popleft()
            # skb->protocol is the sendto protocol: the frame's EtherType, so that tc's "protocol ip"
            # filters see what they would on a real interface.
            ethertype = int.from_bytes(frame[VNET_HDR_BYTES + 12:VNET_HDR_BYTES + 14], "big")
            try:
                self.sink.sendto(frame, (self.sink_name, ethertype))
            except (BlockingIOError, InterruptedError):
                self.dropped += 1  # the socket's send buffer is full: as a frame lost on the wire
            except OSError:
                self.send_errors += 1
            self.holds.append(time.monotonic() - arrived)
            self.frames += 1


def _stats(delay_ms: float, holds: list[float], ways: list[_Direction]) -> dict[str, object]:
    ms = sorted(h * 1000 for h in holds)
    out: dict[str, object] = {"delay_ms": delay_ms, **{w.name: {"frames": w.frames, "dropped": w.dropped,
                                                                "send_errors": w.send_errors} for w in ways}}
    if ms:
        out["hold_ms"] = {"frames": len(ms), "max": round(ms[-1], 3),
                          **{f"p{q}": round(ms[min(len(ms) - 1, int(len(ms) * q / 100))], 3) for q in (0, 50, 90, 99)}}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="forward frames between two interfaces, each held a fixed delay")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--stats", type=Path)
    parser.add_argument("interface_a")
    parser.add_argument("interface_b")
    args = parser.parse_args(argv)
    if args.delay_ms < 0:
        parser.error(f"--delay-ms is {args.delay_ms}; give 0 or more")
    holds: list[float] = []
    try:
        a, b = _open(args.interface_a), _open(args.interface_b)
    except OSError as exc:
        print(f"wandelay: cannot open {args.interface_a} and {args.interface_b}: {exc} (needs root, in the "
              "link's namespace)", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    ways = [_Direction(f"{args.interface_a}->{args.interface_b}", a, b, args.interface_b, args.delay_ms / 1000, holds),
            _Direction(f"{args.interface_b}->{args.interface_a}", b, a, args.interface_a, args.delay_ms / 1000, holds)]

    async def run() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        tasks = []
        for way in ways:
            loop.add_reader(way.source.fileno(), way.on_readable)
            tasks.append(asyncio.create_task(way.forward()))
        print("wandelay: forwarding", flush=True)
        await stop.wait()
        for task in tasks:
            task.cancel()

    asyncio.run(run())
    if args.stats:
        args.stats.write_text(json.dumps(_stats(args.delay_ms, holds, ways), indent=2) + "\n")


if __name__ == "__main__":
    main()
