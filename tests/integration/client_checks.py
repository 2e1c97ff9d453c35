"""What every end-to-end run must show of the client: the figures are the client's own,
and the echoes it lost are the outage's, not a guest that could not keep up."""

from __future__ import annotations

from wanmig.record import ResultRecord
from wanmig.report.text import BASELINE_ANSWERED

NOISE_LOSS = 0.02
"""Echoes lost outside the largest gap, as a share of those sent: a busy host delays
or drops a few (0.2 % in a 192 MiB precopy run here)."""


def assert_client_losses_are_the_outage(rec: ResultRecord) -> None:
    """Before the migration the guest answered the probe (it kept up at rest), and over
    the run at most the outage's worth of echoes was lost (its length ÷ the interval),
    plus ``NOISE_LOSS`` of those sent."""
    net, probe = rec.network, rec.network.probe
    assert probe is not None and net.probe_windows and net.probe_interval_ms
    assert probe["udp_sent"] > 500
    rest = net.probe_windows[0]
    assert rest["until"] == "migration-start"
    assert rest["udp_received"] >= BASELINE_ANSWERED * rest["udp_sent"], rest
    assert net.client_outage_ms is not None
    outage_share = net.client_outage_ms / net.probe_interval_ms
    assert probe["udp_lost"] <= outage_share + NOISE_LOSS * probe["udp_sent"], (
        probe, net.client_outage_ms)
