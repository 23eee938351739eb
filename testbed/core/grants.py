"""Which mRIDs a grant of ``testbed.core.topics.ROLES`` covers for one identity of a topology.

"own" and "any" need no topology; the feeder scopes do: a DMS publishes the diagrams of every
feeder of the bus ("feeders"), a tablet reads those of the feeders at its own site ("site"). The
brokers' ACLs, the devices' subscriptions and the runner's receivers all ask here, so that they agree.
"""

from __future__ import annotations

from testbed.core.errors import ConfigError
from testbed.core.topics import Grant, grant_topics
from testbed.core.topology import Topology

__all__ = ["granted_mrids", "granted_topics"]


def granted_mrids(topology: Topology, ident: str, grant: Grant) -> tuple[str, ...] | None:
    """The mRIDs ``grant`` gives identity ``ident`` on ``topology``; None for any mRID."""
    if grant.scope == "any":
        return None
    if grant.scope == "own":
        return (ident,)
    if grant.scope == "feeders":
        return tuple(f.id for f in topology.feeders)
    try:
        site = topology.device(ident).site
    except ConfigError:  # a harness identity: no site, so no site's feeders
        return ()
    return tuple(f.id for f in topology.feeders if f.site == site)


def granted_topics(topology: Topology, ident: str, grant: Grant) -> list[str]:
    """The topic filters ``grant`` gives identity ``ident`` on ``topology``."""
    return grant_topics(topology.root, grant, ident, granted_mrids(topology, ident, grant) or ())
