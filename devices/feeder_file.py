"""The feeders a DMS manages, as a JSON file: written by the backend, read by the DMS.

An environment variable holds at most 128 KiB, a few hundred feeders; a utility has thousands.
So the backend writes the topology's feeders (``testbed.core.topology.FeederSpec`` as dicts) into
the run directory and names the file in ``FMB_FEEDERS_FILE``; ``FMB_FEEDERS`` (the same JSON
inline) still works for a small bus started by hand. The file is input like any other: every entry
is checked, and a bad one is a one-line error naming the entry and the field.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from testbed.core.errors import DeviceError
from testbed.core.topology import Topology

__all__ = ["MAX_FEEDERS_FILE_BYTES", "FeederPlan", "read_feeders", "write_feeders"]

MAX_FEEDERS_FILE_BYTES = 64 << 20  # 10,000 feeders of 1,000 meters each fit in well under this
# An mRID becomes a topic level: no wildcard, no separator, no control character, no NUL.
_MRID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


@dataclass(frozen=True)
class FeederPlan:
    """One feeder as a device sees it: its id, supply, cap bank and meters (the first regulates)."""

    id: str
    supply: str
    capbank: str
    meters: tuple[str, ...]

    @property
    def meter(self) -> str:
        """The regulating (end-of-line) meter."""
        return self.meters[0]


def write_feeders(topology: Topology, run_dir: Path) -> Path:
    """Write the feeders of ``topology`` into ``run_dir/feeders.json``; its path."""
    path = run_dir / "feeders.json"
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps([asdict(f) for f in topology.feeders], separators=(",", ":")))
    os.replace(tmp, path)  # a device starting meanwhile reads the old file or the new, never half of one
    return path


def read_feeders(extra: Mapping[str, str]) -> list[FeederPlan]:
    """The feeders of ``FMB_FEEDERS_FILE`` (or, without it, ``FMB_FEEDERS``); DeviceError if bad."""
    path = extra.get("FMB_FEEDERS_FILE")
    if path:
        where = path
        try:
            size = Path(path).stat().st_size
            if size > MAX_FEEDERS_FILE_BYTES:
                raise DeviceError(f"FMB_FEEDERS_FILE {path} has {size} bytes, over {MAX_FEEDERS_FILE_BYTES}: "
                                  "is it the feeders file the backend wrote?")
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DeviceError(f"cannot read FMB_FEEDERS_FILE {path}: {e}") from None
    else:
        where, text = "FMB_FEEDERS", extra.get("FMB_FEEDERS", "[]")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise DeviceError(f"{where} is not JSON ({str(e)[:200]}): it must be a list of feeders") from None
    if not isinstance(data, list):
        raise DeviceError(f"{where} holds {type(data).__name__}, not a list of feeders")
    feeders = [_plan(where, i, entry) for i, entry in enumerate(data)]
    seen: dict[str, str] = {}
    for f in feeders:
        for what, ident in (("feeder", f.id), *(("device", d) for d in (f.supply, f.capbank, *f.meters))):
            key = f"{what}:{ident}"
            if key in seen:
                raise DeviceError(f"{where}: {what} {ident!r} appears twice (feeders {seen[key]!r} and {f.id!r}); "
                                  "a device couples to one feeder")
            seen[key] = f.id
    return feeders


def _plan(where: str, i: int, entry: Any) -> FeederPlan:
    def fail(problem: str) -> DeviceError:
        return DeviceError(f"{where}: feeder #{i + 1} {problem}")

    if not isinstance(entry, dict):
        raise fail(f"is {type(entry).__name__}, not an object with id, supply, capbank and meters")

    def mrid(key: str, value: Any) -> str:
        if not isinstance(value, str) or not _MRID.fullmatch(value):
            raise fail(f"field {key!r} is {str(value)[:60]!r}: an mRID (letters, digits, '.', '_', ':', '-'; "
                       "at most 128 characters)")
        return value

    for key in ("id", "supply", "capbank"):
        if key not in entry:
            raise fail(f"misses field {key!r}")
    meters = entry.get("meters", [entry["meter"]] if "meter" in entry else None)
    if not isinstance(meters, list) or not meters:
        raise fail("needs 'meters', a non-empty list of meter mRIDs (the first regulates), or 'meter'")
    return FeederPlan(mrid("id", entry["id"]), mrid("supply", entry["supply"]), mrid("capbank", entry["capbank"]),
                      tuple(mrid(f"meters[{k}]", m) for k, m in enumerate(meters)))
