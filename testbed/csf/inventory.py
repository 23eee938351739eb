"""Identify (NIST CSF ID.AM): the assets of the bus and the data flows between them.

Everything is derived from the same sources that configure the bus (the topology, the topic
tree and the PKI), so the inventory cannot drift from what runs: brokers and their listeners,
devices, harness identities and bridges, every certificate (serial, subject, expiry, revoked or
not), the topics each identity may publish and read on each broker, and the flows of each
profile from its publishers to its readers across planes and sites.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from testbed.core.topics import PROFILES, ROLES, topic
from testbed.core.topology import HARNESS_IDENTITIES, Topology
from testbed.security.pki import PKI

__all__ = ["INVENTORY_SCHEMA", "build_inventory", "plot_data_flows"]

INVENTORY_SCHEMA = "fmb.inventory/1"


def _rights(topology: Topology, ident: str, role: str, site: str | None) -> list[dict[str, str]]:
    rights = []
    for access, grants in (("publish", ROLES[role].publishes), ("read", ROLES[role].reads)):
        for g in grants:
            plane = PROFILES[g.profile].plane
            brokers = [b.name for b in topology.brokers if b.plane == plane and (site is None or b.site == site)]
            for mrid in topology.grant_mrids(ident, g):
                rights.append({"access": access, "topic": topic(topology.root, g.profile, mrid), "profile": g.profile,
                               "plane": plane, "brokers": ", ".join(brokers)})
    return rights


def build_inventory(topology: Topology, pki: PKI | None) -> dict[str, Any]:
    """The inventory as a JSON-ready dict."""
    brokers = [{
        "name": b.name, "site": b.site, "plane": b.plane, "endpoint": f"mqtts://{b.host}:{b.port}",
        "persistent": b.persistent, "autosave_interval_s": b.autosave_interval_s if b.persistent else None,
        "listener": {"tls": "1.2+", "client_certificate": "required", "identity": "certificate CN",
                     "anonymous": False, "crl": True, "plaintext": False},
    } for b in topology.brokers]
    devices: list[dict[str, Any]]  # a tablet's gets its web console below
    devices = [{"id": d.id, "role": d.role, "site": d.site,
                "brokers": [topology.broker_for(d.site, p).name for p in ("delivery", "control")],
                "rights": _rights(topology, d.id, d.role, d.site)} for d in topology.devices]
    # The only listener that is not a broker's: the operator console each tablet serves.
    for d in devices:
        if d["role"] == "tablet":
            d["web_console"] = {"listener": "https, 127.0.0.1 (published on the host's loopback in Compose)",
                                "certificate": f"{d['id']}-ui", "tls": "1.2+", "authentication": "access token",
                                "client_certificate": "none", "plaintext": False,
                                "can": "set a supply's voltage (signed as the tablet), run Appendix A"}
    harness = [{"id": h, "role": h, "rights": _rights(topology, h, h, None)} for h in HARNESS_IDENTITIES]
    bridges = [{"identity": b.name, "from": b.local, "to": b.remote, "plane": b.plane,
                "profiles": topology.bridge_directions(b)} for b in topology.bridges]
    flows = []
    for profile in PROFILES.values():
        pubs = [d for d in topology.devices if any(g.profile == profile.name for g in ROLES[d.role].publishes)]
        readers = [d for d in topology.devices if any(g.profile == profile.name for g in ROLES[d.role].reads)]
        for p in pubs:
            for r in readers:
                flows.append({"profile": profile.name, "kind": profile.kind, "plane": profile.plane,
                              "from": p.id, "to": r.id, "sites": sorted({p.site, r.site}),
                              "crosses_bridge": p.site != r.site})
    certificates = []
    if pki is not None and pki.exists():
        certificates = pki.certificates()
    now = dt.datetime.now(dt.UTC)
    for c in certificates:
        not_after = dt.datetime.fromisoformat(str(c["not_after"]))
        if not_after.tzinfo is None:
            not_after = not_after.replace(tzinfo=dt.UTC)
        c["expires_in_days"] = (not_after - now).days
        c["serial"] = format(c["serial"], "x") if isinstance(c["serial"], int) else c["serial"]
    return {"schema": INVENTORY_SCHEMA, "created": now.isoformat(timespec="seconds"), "topology": topology.path,
            "topic_root": topology.root, "brokers": brokers, "devices": devices, "harness_identities": harness,
            "bridges": bridges, "data_flows": flows, "certificates": certificates,
            "feeders": [{"id": f.id, "site": f.site, "supply": f.supply, "capbank": f.capbank, "meter": f.meter}
                        for f in topology.feeders]}


def plot_data_flows(inventory: dict[str, Any], path: Path) -> Path:
    """A data-flow diagram: sites side by side, devices in their site, one arrow per flow."""
    # matplotlib only for the diagram: the inventory itself (and the responder) do not need it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sites = sorted({d["site"] for d in inventory["devices"]}, key=lambda s: s != "field")
    fig = Figure(figsize=(12, 7), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_axis_off()
    pos: dict[str, tuple[float, float]] = {}
    for i, site in enumerate(sites):
        x = 0.2 + 0.6 * i
        members = [d for d in inventory["devices"] if d["site"] == site]
        ax.add_patch(_box(x - 0.17, 0.05, 0.34, 0.85, "#f4f6f8"))
        ax.text(x, 0.93, f"site {site}", ha="center", fontsize=12, weight="bold")
        for j, d in enumerate(members):
            y = 0.8 - j * (0.7 / max(len(members), 1))
            pos[d["id"]] = (x, y)
            ax.text(x, y, f"{d['id']}\n({d['role']})", ha="center", va="center", fontsize=9,
                    bbox={"boxstyle": "round", "fc": "white", "ec": "#555"})
    colors = {"control": "#b03a2e", "delivery": "#1f618d"}
    seen = set()
    for n, f in enumerate(inventory["data_flows"]):
        key = (f["from"], f["to"])
        if key in seen or f["from"] not in pos or f["to"] not in pos:
            continue
        seen.add(key)
        (x1, y1), (x2, y2) = pos[f["from"]], pos[f["to"]]
        labels = [g["profile"].removesuffix("Profile") for g in inventory["data_flows"]
                  if (g["from"], g["to"]) == key]
        plane = f["plane"]
        rad = 0.15 + 0.05 * (n % 3)
        ax.annotate("", xy=(x2, y2), xytext=(x1, y1),
                    arrowprops={"arrowstyle": "->", "color": colors[plane], "lw": 1.3,
                                "connectionstyle": f"arc3,rad={rad}"})
        # The middle of matplotlib's arc3 curve: half-way to its control point.
        lx, ly = (x1 + x2) / 2 + rad / 2 * (y2 - y1), (y1 + y2) / 2 - rad / 2 * (x2 - x1)
        ax.text(lx, ly, ", ".join(labels), fontsize=8, ha="center", va="center", color=colors[plane],
                bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8})
    ax.text(0.5, 0.0, "red: control plane   blue: delivery plane   (arrows between sites cross a "
            "mutual-TLS bridge)", ha="center", fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.03, 1)
    ax.set_title(f"Data flows of {inventory['topology'].rsplit('/', 1)[-1]}")
    fig.savefig(path)
    return path


def _box(x: float, y: float, w: float, h: float, color: str) -> Any:
    from matplotlib.patches import FancyBboxPatch  # as in plot_data_flows: matplotlib only for the diagram

    return FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.01", fc=color, ec="#999")
