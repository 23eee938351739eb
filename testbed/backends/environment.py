"""The conditions of a run: versions, machine, TLS and QoS, stated next to every figure."""

from __future__ import annotations

import os
import platform
import ssl
import subprocess
from importlib import metadata
from pathlib import Path

from brokers.mosquitto import mosquitto_binary
from testbed.core.results import Environment
from testbed.core.topology import Topology

__all__ = ["environment", "mosquitto_version"]


def mosquitto_version() -> str | None:
    try:
        out = subprocess.run([mosquitto_binary(), "-h"], capture_output=True, text=True, timeout=5)
    except Exception:
        return None
    first = (out.stdout or out.stderr).splitlines()[0:1]
    return first[0].replace("mosquitto version ", "").strip() if first else None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def environment(topology: Topology, tls_version: str | None, backend: str) -> Environment:
    """Everything a reader needs to judge a figure: software, machine and bus conditions."""
    return {
        "backend": backend,
        "topology": topology.name,
        "qos": topology.qos,
        "tls_version": tls_version,
        "mqtt": "5.0",
        "python": platform.python_version(),
        "mosquitto": mosquitto_version(),
        "paho_mqtt": _version("paho-mqtt"),
        "gmqtt": _version("gmqtt"),
        "openssl": ssl.OPENSSL_VERSION,
        "machine": {
            "cpu": _cpu_model(),
            "cores": os.cpu_count(),
            "memory_gib": _memory_gib(),
            "kernel": platform.release(),
            "system": platform.system(),
            "arch": platform.machine(),
        },
    }
