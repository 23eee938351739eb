"""One fault API, two backends: what a recovery test or benchmark does to a running bus.

:class:`Faults` names the faults; :class:`LocalFaults` applies them to the local backend's
processes (by the pid :class:`~testbed.backends.local.LocalBus` recorded, never by name) and
:class:`DockerFaults` to the Compose bus's containers. A target is a broker name, a device id
or a feeder id, the same in both backends. A fault a backend cannot apply raises
:class:`FaultError` saying which backend can.

========================  ==============================  =====================================
fault                     local processes                 containers
========================  ==============================  =====================================
``kill(name)``            SIGKILL (a crash)               SIGKILL of the container's init from
                                                          the host: the restart policy applies
``stop / start``          SIGTERM / start as at start-up  ``docker stop`` / ``docker start``
``restart(name)``         stop, start, wait until ready   ``docker restart``
``freeze / thaw``         SIGSTOP / SIGCONT               ``docker pause`` / ``unpause``
``partition / heal``      --                              disconnect / reconnect a site's
                                                          brokers from the networks they bridge to
``impair / clear``        --                              ``tc netem`` delay, jitter, loss in the
                                                          container's network namespace
========================  ==============================  =====================================

``tc`` runs from the host through ``nsenter`` on the container's process, so images need
neither iproute2 nor NET_ADMIN: only the harness (root on this host) can impair a link. Where
the kernel has no netem qdisc, loss falls back to an iptables ``statistic`` rule in the
container's namespace and delay raises :class:`FaultError`.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from testbed.core.errors import FaultError

if TYPE_CHECKING:
    from testbed.backends.compose import ComposeProject
    from testbed.backends.local import LocalBus
    from testbed.core.topology import Topology

__all__ = ["DockerFaults", "FaultError", "Faults", "LocalFaults"]

LOSS_COMMENT = "fmb-impair"


class Faults:
    """The faults every backend offers; a backend overrides what it can do."""

    backend = "none"

    def kill(self, name: str) -> None:
        """Kill ``name`` at once, as a crash would (no clean shutdown, no persistence save)."""
        self._unsupported("kill")

    def stop(self, name: str) -> None:
        """Stop ``name`` cleanly (SIGTERM, then SIGKILL after a grace period)."""
        self._unsupported("stop")

    def start(self, name: str) -> None:
        """Start ``name`` again after :meth:`stop` or :meth:`kill`."""
        self._unsupported("start")

    def restart(self, name: str) -> None:
        """Stop ``name`` cleanly and start it again."""
        self._unsupported("restart")

    def freeze(self, name: str) -> None:
        """Suspend ``name``: its connections stay open but it answers nothing."""
        self._unsupported("freeze")

    def thaw(self, name: str) -> None:
        """Resume ``name`` after :meth:`freeze`."""
        self._unsupported("thaw")

    def partition(self, site: str) -> None:
        """Cut ``site`` off from the sites its bridges connect to (and that bridge to it)."""
        self._unsupported("partition")

    def heal(self, site: str) -> None:
        """Undo :meth:`partition`."""
        self._unsupported("heal")

    def impair(self, name: str, delay_ms: float = 0, jitter_ms: float = 0, loss_pct: float = 0,
               network: str | None = None) -> None:
        """Delay and drop packets leaving ``name`` (on one network, or on all of them)."""
        self._unsupported("impair")

    def clear(self, name: str) -> None:
        """Remove every impairment of ``name``."""
        self._unsupported("clear")

    @contextmanager
    def frozen(self, name: str) -> Iterator[None]:
        self.freeze(name)
        try:
            yield
        finally:
            self.thaw(name)

    @contextmanager
    def partitioned(self, site: str) -> Iterator[None]:
        self.partition(site)
        try:
            yield
        finally:
            self.heal(site)

    @contextmanager
    def impaired(self, name: str, **impairment: Any) -> Iterator[None]:
        self.impair(name, **impairment)
        try:
            yield
        finally:
            self.clear(name)

    def _unsupported(self, fault: str) -> None:
        raise FaultError(f"the {self.backend} backend cannot {fault}: "
                         + ("local processes share one network namespace; use --backend docker"
                            if fault in ("partition", "heal", "impair", "clear")
                            else "not implemented"))


class LocalFaults(Faults):
    """Faults on a :class:`~testbed.backends.local.LocalBus`: signals to the pids it recorded."""

    backend = "local"

    def __init__(self, bus: LocalBus) -> None:
        self.bus = bus

    def _check(self, name: str) -> None:
        if not any(p.name == name for p in self.bus.processes):
            known = ", ".join(p.name for p in self.bus.processes)
            raise FaultError(f"no process {name!r} in the local bus (known: {known})")

    def kill(self, name: str) -> None:
        self._check(name)
        self.bus.signal(name, signal.SIGKILL)

    def stop(self, name: str) -> None:
        self._check(name)
        self.bus.stop_process(name, timeout_s=10)

    def start(self, name: str) -> None:
        self._check(name)
        if not self.bus.alive(name):
            self.bus.restart(name)

    def restart(self, name: str) -> None:
        self._check(name)
        self.bus.restart(name)

    def freeze(self, name: str) -> None:
        self._check(name)
        self.bus.signal(name, signal.SIGSTOP)

    def thaw(self, name: str) -> None:
        self._check(name)
        self.bus.signal(name, signal.SIGCONT)


class DockerFaults(Faults):
    """Faults on the Compose bus's containers, through the Docker SDK (and nsenter + tc)."""

    backend = "docker"

    def __init__(self, project: ComposeProject, topology: Topology) -> None:
        self.project = project
        self.topology = topology
        self._detached: dict[str, list[tuple[str, str, list[str]]]] = {}

    def kill(self, name: str) -> None:
        # `docker kill` counts as a manual stop and disables the restart policy; a crash is
        # the process dying, which only a signal from outside the container gives.
        container = self.project.container(name)
        pid = int(container.attrs["State"]["Pid"])
        if pid <= 0:
            raise FaultError(f"{name} is not running")
        try:
            os.kill(pid, signal.SIGKILL)
        except PermissionError:
            raise FaultError(f"cannot kill {name}'s process {pid}: run the harness as root "
                             "(or use stop, which docker applies for you)") from None

    def stop(self, name: str) -> None:
        self.project.container(name).stop(timeout=10)

    def start(self, name: str) -> None:
        self.project.container(name).start()

    def restart(self, name: str) -> None:
        self.project.container(name).restart(timeout=10)

    def freeze(self, name: str) -> None:
        self.project.container(name).pause()

    def thaw(self, name: str) -> None:
        self.project.container(name).unpause()

    def partition(self, site: str) -> None:
        if site in self._detached:
            return
        if site not in {s.name for s in self.topology.sites}:
            known = ", ".join(s.name for s in self.topology.sites)
            raise FaultError(f"no site {site!r} (sites: {known})")
        cut: list[tuple[str, str, list[str]]] = []
        address: dict[str, ipaddress.IPv4Address | ipaddress.IPv6Address] = {}
        # Networks are named after sites; a bridge's local broker sits on its peer's network.
        for bridge in self.topology.bridges:
            local, remote = self.topology.broker(bridge.local), self.topology.broker(bridge.remote)
            if site not in (local.site, remote.site):
                continue
            container = self.project.container(local.name)
            network = self.project.network(remote.site)
            settings = container.attrs["NetworkSettings"]["Networks"].get(network.name)
            if settings is None:
                continue
            aliases = [a for a in settings.get("Aliases") or [] if a != container.id[:12]]
            network.disconnect(container)
            cut.append((local.name, remote.site, aliases))
            address[local.name] = ipaddress.ip_address(settings["IPAddress"] or "0.0.0.0")
        # A healed WAN link does not renumber hosts, but Docker gives a reconnected container the
        # network's lowest free address (and takes no address of our choosing on a Compose network
        # without a configured subnet). Reconnecting in the order of the old addresses gives each
        # broker its own back: a renumbered broker's surviving bridge connections would be dead and
        # wait out the keepalive (seen: a 5 s partition healed in 6.5 s instead of 1.5 s).
        cut.sort(key=lambda c: address[c[0]])
        self._detached[site] = cut

    def heal(self, site: str) -> None:
        for name, network_site, aliases in self._detached.pop(site, []):
            container = self.project.container(name)
            self.project.network(network_site).connect(container, aliases=aliases)

    def _interfaces(self, pid: int, mac: str | None) -> list[str]:
        out = self._nsenter(pid, ["ip", "-o", "link", "show"])
        names = []
        for line in out.splitlines():
            parts = line.split()
            iface = parts[1].rstrip(":").split("@")[0]
            if iface == "lo":
                continue
            if mac is None or mac.lower() in line.lower():
                names.append(iface)
        return names

    def _nsenter(self, pid: int, argv: list[str], check: bool = True) -> str:
        for tool in ("nsenter", argv[0]):
            if shutil.which(tool) is None:
                package = {"nsenter": "util-linux", "iptables": "iptables"}.get(tool, "iproute2")
                raise FaultError(f"link faults need {tool} on this host (apt-get install "
                                 f"{package})")
        done = subprocess.run(["nsenter", "-t", str(pid), "-n", *argv],
                              capture_output=True, text=True)
        if check and done.returncode != 0:
            raise FaultError(f"`{' '.join(argv)}` in the container's network namespace failed: "
                             f"{done.stderr.strip()} (link faults need root on this host)")
        return done.stdout

    def _target(self, name: str) -> tuple[int, dict[str, Any]]:
        container = self.project.container(name)
        pid = int(container.attrs["State"]["Pid"])
        if pid <= 0:
            raise FaultError(f"{name} is not running")
        return pid, container.attrs["NetworkSettings"]["Networks"]

    def impair(self, name: str, delay_ms: float = 0, jitter_ms: float = 0, loss_pct: float = 0,
               network: str | None = None) -> None:
        if delay_ms < 0 or jitter_ms < 0 or not 0 <= loss_pct <= 100:
            raise FaultError("impair: delay_ms and jitter_ms >= 0, loss_pct 0-100")
        pid, networks = self._target(name)
        mac = None
        if network is not None:
            settings = networks.get(self.project.network(network).name)
            if settings is None:
                raise FaultError(f"{name} is not on network {network!r}")
            mac = settings["MacAddress"]
        netem = ["delay", f"{delay_ms}ms"] + ([f"{jitter_ms}ms"] if jitter_ms else [])
        netem += ["loss", f"{loss_pct}%"] if loss_pct else []
        for iface in self._interfaces(pid, mac):
            try:
                self._nsenter(pid, ["tc", "qdisc", "replace", "dev", iface, "root", "netem",
                                    *netem])
            except FaultError as e:
                if "qdisc kind is unknown" not in str(e):
                    raise
                if delay_ms or jitter_ms:
                    raise FaultError("this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM): "
                                     "delay cannot be emulated here; loss alone can") from None
                # Loss without netem: drop a random share of what leaves the interface.
                self._nsenter(pid, ["iptables", "-I", "OUTPUT", *self._loss_rule(iface, loss_pct)])

    @staticmethod
    def _loss_rule(iface: str, loss_pct: float) -> list[str]:
        return ["-o", iface, "-m", "statistic", "--mode", "random", "--probability",
                f"{loss_pct / 100:.4f}", "-m", "comment", "--comment", LOSS_COMMENT, "-j", "DROP"]

    def clear(self, name: str) -> None:
        pid, _ = self._target(name)
        for iface in self._interfaces(pid, None):
            self._nsenter(pid, ["tc", "qdisc", "del", "dev", iface, "root"], check=False)
        if shutil.which("iptables"):
            rules = self._nsenter(pid, ["iptables", "-S", "OUTPUT"], check=False)
            for rule in rules.splitlines():
                if LOSS_COMMENT in rule and rule.startswith("-A OUTPUT "):
                    self._nsenter(pid, ["iptables", "-D", "OUTPUT", *shlex.split(rule)[2:]],
                                  check=False)
