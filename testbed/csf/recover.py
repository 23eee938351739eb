"""Recover (NIST CSF RC.RP): bring the bus back, and prove it is back.

* :func:`recover` restarts whatever of a bus is down (brokers from their persisted state, then
  feeder models, then devices), or starts the recorded bus again after a whole-machine stop;
* :func:`reissue` gives a revoked identity a fresh key and certificate and restarts its process;
* :func:`backup` / :func:`restore` archive and bring back the PKI and the data-centre brokers'
  persistence (the archive holds private keys: it is written with mode 0600).

Each is verified, not assumed: the CLI runs the Appendix A scenario afterwards and reports it.
"""

from __future__ import annotations

import io
import os
import signal
import tarfile
import time
from pathlib import Path

from testbed.backends.local import LocalBus
from testbed.core.errors import TestbedError, WaitTimeout
from testbed.core.waiting import wait_until
from testbed.security.pki import PKI
from testbed.transport.mqtt import RECONNECT_MAX_S

__all__ = ["backup", "recover", "reissue", "restore"]

_KIND_ORDER = {"broker": 0, "feeder": 1, "device": 2, "fleet": 2, "monitor": 3}  # the monitor watches the others


def recover(bus: LocalBus) -> list[str]:
    """Restart every recorded process that is down, then every one still unhealthy; returns their names.

    Down processes restart first, brokers before devices. A process that is alive but unhealthy
    (:meth:`LocalBus.health`: its MQTT network thread died, it is frozen, or it has been cut off
    from a broker past its backoff) is given its reconnect backoff to come back on its own, since
    a client of a broker that was just restarted reconnects by itself; what is still unhealthy
    then is restarted too.
    """
    def order(names: list[str]) -> list[str]:
        kinds = {p.name: p.kind for p in bus.processes}
        return sorted(names, key=lambda name: _KIND_ORDER[kinds[name]])

    down = order([p.name for p in bus.processes if bus.health(p.name)[0] == "DOWN"])
    for name in down:
        bus.restart(name)

    def unhealthy() -> list[str]:
        return [p.name for p in bus.processes if bus.health(p.name)[0] != "up"]

    try:
        wait_until(lambda: not unhealthy(), RECONNECT_MAX_S + 3, interval_s=0.5, what="")
        stuck: list[str] = []
    except WaitTimeout:
        stuck = order(unhealthy())
    for name in stuck:
        bus.restart(name)
    return down + stuck


def reissue(pki: PKI, name: str, bus: LocalBus | None) -> Path:
    """A fresh certificate for revoked ``name``; its process, if running, restarts with it."""
    paths = pki.issue_client(name)
    if bus is not None:
        fleet = next((d.fleet for d in bus.topology.devices_matching(name) if d.id == name), "")
        process = fleet or name  # a fleet's meter runs in its fleet's process
        if any(p.name == process for p in bus.processes):
            bus.restart(process)
    return paths.cert


def backup(certs: Path, state: Path, archive: Path, bus: LocalBus | None) -> list[str]:
    """Archive the PKI and the brokers' persistence; returns the archived paths.

    A running persistent broker is asked to save first (SIGUSR1), so the archive holds what it
    had in memory, not its last autosave.
    """
    if bus is not None:
        for p in bus.processes:
            if p.kind == "broker" and bus.topology.broker(p.name).persistent and bus.alive(p.name):
                bus.signal(p.name, signal.SIGUSR1)
        time.sleep(0.5)  # Mosquitto writes the database from its main loop
    if not PKI(certs).exists():
        raise TestbedError(f"no PKI in {certs} to back up; run `fmb certs init` first")
    members: list[tuple[Path, str]] = [(f, f"certs/{f.relative_to(certs)}") for f in sorted(certs.rglob("*"))
                                       if f.is_file() and not f.name.startswith(".")]
    brokers = state / "brokers"
    if brokers.exists():
        # Not a snapshot being written (mosquitto.db.new): a broker saving every 500 ms renames it any moment.
        members += [(f, f"brokers/{f.relative_to(brokers)}") for f in sorted(brokers.glob("*/data/*"))
                    if f.is_file() and not f.name.endswith(".new")]
    archive.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(archive, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for path, arcname in members:
            tar.add(path, arcname=arcname)
    return [a for _, a in members]


def restore(archive: Path, certs: Path, state: Path) -> list[str]:
    """Bring back a backup into ``certs`` and ``state`` (the bus must be down)."""
    if LocalBus.attach(state) is not None:
        raise TestbedError(f"a bus is running from {state}; `fmb down` before restoring")
    try:
        tar = tarfile.open(archive, "r:gz")  # noqa: SIM115 - closed by the `with tar` below
    except (OSError, tarfile.TarError) as e:
        raise TestbedError(f"{archive} is not a backup made by `fmb backup` ({e})") from None
    restored = []
    with tar:
        for member in tar.getmembers():
            top, _, rest = member.name.partition("/")
            if not member.isfile() or top not in ("certs", "brokers") or ".." in Path(rest).parts or not rest:
                raise TestbedError(f"{archive} holds an unexpected entry {member.name!r}; refusing to restore it")
            target = (certs if top == "certs" else state / "brokers") / rest
            target.parent.mkdir(parents=True, exist_ok=True)
            data = tar.extractfile(member)
            assert data is not None
            mode = 0o600 if target.suffix == ".key" or target.suffix == ".db" else 0o644
            tmp = target.with_name(f".{target.name}.restore")
            fd = os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, mode)
            with os.fdopen(fd, "wb") as out:
                out.write(io.BytesIO(data.read()).getvalue())
            os.chmod(tmp, mode)
            tmp.replace(target)
            restored.append(member.name)
    for d in (certs / "ca", certs / "signing"):
        if d.exists():
            d.chmod(0o700)
    return restored
