"""The testbed's one error tree.

    TestbedError                 anything the testbed reports to a user as one line
    ├── ConfigError              a topology or scenario file is wrong (names file, field, fix)
    ├── PKIError                 certificates missing, unreadable or inconsistent
    ├── BrokerError              a broker will not start, or the mosquitto binary is missing
    ├── DeviceError              a device process failed to start or died
    └── ScenarioError            a scenario could not be run (not: a scenario that failed)

Every message says what to fix. The CLI prints it on one line and exits non-zero.
"""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "ConfigError",
    "DeviceError",
    "PKIError",
    "ScenarioError",
    "TestbedError",
]


class TestbedError(Exception):
    """Base of every error the testbed reports to a user."""

    __test__ = False  # not a pytest test class despite the name


class ConfigError(TestbedError):
    """A topology or scenario file is invalid."""

    def __init__(self, path: object, field: str, problem: str, fix: str) -> None:
        self.path = str(path)
        self.field = field
        self.problem = problem
        self.fix = fix
        where = f"{self.path}: {field}" if field else self.path
        super().__init__(f"{where}: {problem}; {fix}")


class PKIError(TestbedError):
    """The PKI is missing, unreadable or inconsistent."""


class BrokerError(TestbedError):
    """A broker cannot be configured or started."""


class DeviceError(TestbedError):
    """A device process failed."""


class ScenarioError(TestbedError):
    """A scenario could not be run at all."""
