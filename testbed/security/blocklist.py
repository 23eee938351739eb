"""The responder's block list: identities and topics that lose every ACL right, kept on disk.

:class:`testbed.csf.respond.Responder` adds to it; every backend renders each broker's ACL with
it (:func:`brokers.mosquitto.render_acl`), so a restarted broker keeps the blocks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Blocklist"]


@dataclass
class Blocklist:
    """Identities and topics the responder has blocked, persisted in the state directory."""

    identities: list[str] = field(default_factory=list)
    topics: list[str] = field(default_factory=list)

    @staticmethod
    def path(state_dir: Path) -> Path:
        return state_dir / "blocklist.json"

    @classmethod
    def load(cls, state_dir: Path) -> Blocklist:
        p = cls.path(state_dir)
        if not p.exists():
            return cls()
        data = json.loads(p.read_text())
        return cls(list(data.get("identities", [])), list(data.get("topics", [])))

    def save(self, state_dir: Path) -> None:
        tmp = self.path(state_dir).with_suffix(".tmp")
        tmp.write_text(json.dumps({"identities": self.identities, "topics": self.topics}, indent=2) + "\n")
        tmp.replace(self.path(state_dir))
