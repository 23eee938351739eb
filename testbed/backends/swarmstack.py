"""A deployed Swarm stack of the bus: deploy it, wait until it is healthy, run the harness, remove it.

:class:`SwarmStack` drives ``docker stack deploy`` / ``docker stack rm`` (the CLI: it is what reads
a stack file) and watches the services through the engine's API. Healthy means every service but
the one-shot ``scenario`` has its replicas running, and Swarm marks a task running only once its
container's health check passed (a failing one is replaced), so readiness comes from the health
checks, the only ordering a stack has. :meth:`run` starts the ``scenario`` service (deployed with
no replica) once, optionally for one substation, and returns its exit status and its log.
:func:`ensure_swarm` / :func:`leave_swarm` make and undo a single-node swarm on this engine.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.backends.compose import docker_client
from testbed.backends.swarm import site_label
from testbed.core.errors import TestbedError

__all__ = ["ScenarioRun", "SwarmStack", "check_stack_name", "docker_errors", "ensure_swarm", "label_node",
           "leave_swarm", "swarm_state"]

STACK_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,30}")
SCENARIO = "scenario"


@dataclass(frozen=True)
class ScenarioRun:
    """One run of the harness service: its exit status (None: it did not end in time) and its log."""

    exit_code: int | None
    log: str
    substation: str | None


def _docker(*args: str, timeout_s: float = 300.0, merge: bool = False) -> str:
    """Run ``docker ARGS``; its standard output (with ``merge``, and its standard error)."""
    try:
        done = subprocess.run(["docker", *args], stdout=subprocess.PIPE, text=True, timeout=timeout_s,
                              stderr=subprocess.STDOUT if merge else subprocess.PIPE)
    except FileNotFoundError:
        raise TestbedError("no `docker` command: install Docker Engine 20.10 or later") from None
    except subprocess.TimeoutExpired:
        raise TestbedError(f"`docker {' '.join(args[:3])}` took more than {timeout_s:g} s") from None
    if done.returncode != 0:
        last = ((done.stderr or done.stdout).strip().splitlines() or ["(no message)"])[-1]
        raise TestbedError(f"`docker {' '.join(args[:3])}` failed: {last}")
    return done.stdout


def docker_errors() -> Any:
    """The Docker SDK's exceptions module (imported where a stack is driven, like the SDK itself)."""
    import docker.errors
    return docker.errors


def swarm_state() -> str:
    """This engine's swarm state: ``inactive``, ``active``, ``pending``, ``error`` or ``locked``."""
    return _docker("info", "--format", "{{.Swarm.LocalNodeState}}").strip()


def ensure_swarm(advertise: str = "127.0.0.1") -> bool:
    """Make this engine a single-node swarm if it is in none; True if this call made it (so the
    caller leaves it again with :func:`leave_swarm`)."""
    state = swarm_state()
    if state == "active":
        return False
    if state != "inactive":
        raise TestbedError(f"this engine's swarm state is {state!r}: fix it (docker swarm leave --force) first")
    _docker("swarm", "init", "--advertise-addr", advertise, "--listen-addr", f"{advertise}:0")
    return True


def leave_swarm() -> None:
    """Leave the swarm (a single-node one: its services, secrets and configs go with it)."""
    _docker("swarm", "leave", "--force")


def label_node(labels: list[str], node: str | None = None) -> None:
    """Put ``label=true`` on ``node`` (default: this engine's node) for each label (the stack's
    placement constraints)."""
    args = [a for label in labels for a in ("--label-add", f"{label}=true")]
    _docker("node", "update", *args, node or _docker("info", "--format", "{{.Swarm.NodeID}}").strip())


def check_stack_name(name: str) -> str:
    """``name`` if it can name a stack (its services, secrets and configs are prefixed with it)."""
    if not STACK_NAME.fullmatch(name):
        raise TestbedError(f"stack name {name!r}: use up to 31 lower-case letters, digits, '-' and '_', "
                           "starting with a letter or digit")
    return name


class SwarmStack:
    """A stack named ``name`` on this engine's swarm."""

    def __init__(self, name: str) -> None:
        self.name = check_stack_name(name)
        self.client = docker_client()

    def deploy(self, stack_file: Path) -> None:
        """``docker stack deploy`` the file (creates or updates; secrets and configs included)."""
        if not stack_file.is_file():
            raise TestbedError(f"no stack file {stack_file}: write one with `fmb swarm stack -o DIR`")
        # --resolve-image never: the images are local (scripts/images, no registry); asking a registry
        # for their digests would only wait for it to time out.
        _docker("stack", "deploy", "--prune", "--resolve-image", "never", "-c", str(stack_file), self.name)

    def services(self) -> list[Any]:
        return list(self.client.services.list(filters={"label": f"com.docker.stack.namespace={self.name}"}))

    def not_ready(self) -> list[str]:
        """The services (their short names) without all their replicas running (= healthy)."""
        late = []
        for service in self.services():
            short = service.name.removeprefix(f"{self.name}_")
            if short == SCENARIO:
                continue
            want = service.attrs["Spec"].get("Mode", {}).get("Replicated", {}).get("Replicas", 1)
            running = [t for t in service.tasks(filters={"desired-state": "running"})
                       if t["Status"]["State"] == "running"]
            if len(running) < want:
                late.append(short)
        return sorted(late)

    def restarts(self) -> dict[str, int]:
        """Per service (short name), how many of its tasks ended and were replaced (the harness's
        runs not counted): a device killed by a failing health check shows here."""
        counts = {}
        for service in self.services():
            short = service.name.removeprefix(f"{self.name}_")
            replaced = len(service.tasks()) - 1
            if short != SCENARIO and replaced > 0:
                counts[short] = replaced
        return counts

    def wait_healthy(self, timeout_s: float) -> float:
        """Wait until :meth:`not_ready` is empty; the seconds it took. Raises with the late services."""
        start = time.monotonic()
        late: list[str] = ["(none listed yet)"]
        while time.monotonic() - start < timeout_s:
            if self.services():
                late = self.not_ready()
                if not late:
                    return time.monotonic() - start
            time.sleep(2)
        raise TestbedError(f"stack {self.name}: not healthy after {timeout_s:g} s: {', '.join(late)} "
                           f"(`docker service ps {self.name}_{late[0]} --no-trunc` says why)")

    def run(self, substation: str | None = None, timeout_s: float = 180.0) -> ScenarioRun:
        """Run the one-shot harness once (for ``substation`` of a large topology): (exit code, log).

        For a substation it runs on that substation's node (its placement label): it enters the
        operator's input through the tablet's socket on the node-local ``ui`` volume."""
        service = f"{self.name}_{SCENARIO}"
        spec = self.client.services.get(service).attrs["Spec"]
        placed = spec["TaskTemplate"].get("Placement", {}).get("Constraints", [])
        args = ["--env-add", f"FMB_SUBSTATION={substation}"] if substation else ["--env-rm", "FMB_SUBSTATION"]
        if substation:
            args += [a for c in placed for a in ("--constraint-rm", c)]
            args += ["--constraint-add", f"node.labels.{site_label(substation)}==true"]
        before = {t["ID"] for t in self.client.services.get(service).tasks()}
        _docker("service", "update", "--detach", "--force", "--replicas", "1", *args, service)
        deadline = time.monotonic() + timeout_s
        code: int | None = None
        task_id = None
        while time.monotonic() < deadline and code is None:
            time.sleep(1)
            tasks = [t for t in self.client.services.get(service).tasks() if t["ID"] not in before]
            for t in tasks:
                state = t["Status"]["State"]
                if state in ("complete", "failed", "rejected", "shutdown"):
                    task_id = t["ID"]
                    code = int(t["Status"].get("ContainerStatus", {}).get("ExitCode", -1))
                    if state == "rejected":
                        code = -1
        log = _docker("service", "logs", "--raw", task_id, timeout_s=60, merge=True) if task_id else ""
        _docker("service", "scale", "--detach", f"{service}=0")
        return ScenarioRun(code, log, substation)

    def remove(self, timeout_s: float = 120.0) -> None:
        """``docker stack rm``, then wait until its services, networks, secrets, configs and containers
        are gone and remove its volumes on this node (``docker stack rm`` leaves them; the data
        centre's persistence goes too, as with ``docker compose down -v``; on other nodes remove
        them there: ``docker volume rm STACK_...``)."""
        _docker("stack", "rm", self.name)
        label = {"label": f"com.docker.stack.namespace={self.name}"}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            left = self.leftovers()
            if left == [v for v in left if v.startswith("volume ")]:
                for volume in self.client.volumes.list(filters=label):
                    # still in use by a container on its way out: the next round removes it
                    with contextlib.suppress(docker_errors().APIError):
                        volume.remove()
            if not self.leftovers():
                return
            time.sleep(1)

    def leftovers(self) -> list[str]:
        """What of the stack still exists: services, networks, secrets, configs, and this node's
        containers and volumes (by the stack's label)."""
        label = {"label": f"com.docker.stack.namespace={self.name}"}
        found = [f"service {s.name}" for s in self.client.services.list(filters=label)]
        found += [f"network {n.name}" for n in self.client.networks.list(filters=label)]
        found += [f"secret {s.name}" for s in self.client.secrets.list(filters=label)]
        found += [f"config {c.name}" for c in self.client.configs.list(filters=label)]
        # sparse: no inspection of each, which fails for a container removed meanwhile
        found += [f"container {c.id[:12]}" for c in self.client.containers.list(all=True, filters=label, sparse=True)]
        found += [f"volume {v.name}" for v in self.client.volumes.list(filters=label)]
        return found
