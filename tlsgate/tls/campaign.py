"""The words of a probe campaign summary (`client_probe/campaign_summary`), shared by the verdict that writes it
(`tlsgate.checks.campaign`) and the reports that read it back (`tlsgate.report`)."""

from __future__ import annotations

from typing import Final

HOSTS_KEPT: Final = 4  # per kind and result: enough to say where, bounded whatever the app talks to

# The outcome of a kind for a device, worst first (a kind accepted once is accepted, whatever else happened).
ACCEPTED: Final = "accepted"
REFUSED: Final = "refused"
INCONCLUSIVE: Final = "inconclusive"  # offered, and the connection ended in a way that proves nothing
NOT_RUN: Final = "not_run"
RESULTS: Final = (ACCEPTED, REFUSED, INCONCLUSIVE, NOT_RUN)

# Why a kind never ran, most telling first: the first that applies is the one said.
UNSERVABLE: Final = "unservable"
QUIC_ONLY: Final = "quic_only"
NOT_APPLICABLE: Final = "not_applicable"
NOT_ITS_TURN: Final = "not_its_turn"
NO_CONNECTION: Final = "no_connection"
REASONS: Final = {
    UNSERVABLE: "tlsgate could not serve it (OpenSSL here refused the probe certificate or offer)",
    NOT_ITS_TURN: "its turn had not come when the run stopped (one kind per probed connection, and only "
    "probe_fraction of the connections probed): run the app longer, or raise probe_fraction",
    QUIC_ONLY: "the device reached the hosts with this rule only over QUIC, where protocol probes cannot be served",
    NOT_APPLICABLE: "it does not apply to the hosts the device reached (wildcard kinds need a name, ip_name_only an IP)",
    NO_CONNECTION: "the device made no connection to a host whose rule lists it",
}
