"""A readable summary of one result record, for the terminal.

``render_record`` returns a rich ``Table``; rich prints it as a boxed table on
a terminal and as plain text when piped.  Missing figures show as ``–``.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..record import ResultRecord, WanInfo

_STATUS_STYLE = {"completed": "bold green", "rolled_back": "bold yellow", "failed": "bold red"}

BASELINE_ANSWERED = 0.95
"""Below this share of echoes answered before the migration, the guest was not keeping
up with the client's probe even at rest: the report says so beside the figures."""


def _window_rows(windows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """One row per stretch between the engine's marks: echoes answered, median RTT."""
    rows: list[tuple[str, str, str]] = []
    for w in windows:
        sent, got = w.get("udp_sent") or 0, w.get("udp_received") or 0
        share = f" ({got / sent:.0%})" if sent else ""
        rows.append((f"  echoes answered until {w.get('until')}",
                     f"{got} / {sent}{share}, p50 RTT {_ms(w.get('udp_rtt_p50_ms'))}", "client"))
    first = windows[0] if windows else None
    if first and first.get("until") == "migration-start" and first.get("udp_sent") and (
            first["udp_received"] < BASELINE_ANSWERED * first["udp_sent"]):
        rows.append(("WARNING", "the guest did not keep up with the probe before the "
                     "migration: the client's figures include that", "client"))
    return rows


def _ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value / 1000:.2f} s" if value >= 10_000 else f"{value:.1f} ms"


def _bytes(value: int | None) -> str:
    if value is None:
        return "–"
    return f"{value / 2**20:.1f} MiB"


def _flag(value: bool | None) -> str:
    return "–" if value is None else ("yes" if value else "NO")


def _count(value: int | None) -> str:
    return "–" if value is None else str(value)


def wan_line(wan: WanInfo) -> str:
    link = wan.link
    if link is None:
        return wan.profile
    parts = [wan.profile, f"RTT {link.rtt_ms:g} ms"]
    if link.rate_mbit:
        parts.append(f"{link.rate_mbit:g} Mbit/s")
    if link.loss_pct:
        parts.append(f"{link.loss_pct:g}% loss")
    if link.jitter_ms:
        parts.append(f"±{link.jitter_ms:g} ms jitter")
    return ", ".join(parts)


def _decision_rows(rec: ResultRecord) -> list[tuple[str, str, str]]:
    """What the guest survey measured, what the model predicted for the plan run,
    and (auto) why it chose it."""
    d = rec.memory.decision
    if not d:
        return []
    survey, pred = d.get("survey") or {}, d.get("predicted") or {}
    rows = [
        ("guest surveyed",
         f"dirty {survey.get('dirty_rate_bytes_s', 0) / 1e6:.1f} MB/s, "
         f"{_bytes(survey.get('nonzero_bytes'))} non-zero, "
         f"zstd x{survey.get('compress_ratio', 1):.2f}", "QEMU calc-dirty-rate, pmemsave"),
        ("predicted total / outage",
         f"{_ms(pred.get('total_ms'))} / {_ms(pred.get('outage_ms'))}", "wanmig.model"),
    ]
    if "reason" in d:
        rows.append(("auto: why", str(d["reason"]), "wanmig.model"))
    return rows


def _budget_rows(rec: ResultRecord) -> list[tuple[str, str, str]]:
    """The migration's bandwidth budget, when anything was capped or it changed."""
    b = rec.budget or {}
    changes = b.get("changes") or []
    if not any(g.get("capped") for g in b.get("grants") or []) and len(changes) < 2:
        return []
    steps = ", then ".join(f"{c['rate_mbit']:g} Mbit/s ({c['by']})" for c in changes)
    return [("bandwidth budget (memory and disk)", steps,
             f"disk share {b.get('storage_share', 0):.0%} beside memory")]


def _tunnel_rows(rec: ResultRecord) -> list[tuple[str, str, str]]:
    """The network mode's tunnel across the WAN, where it has one."""
    extra = rec.network.model_extra or {}
    if not extra.get("tunnel"):
        return []
    return [("network: tunnel over the WAN", str(extra["tunnel"]),
             f"up in {_ms(extra.get('tunnel_setup_ms'))}")]


def _storage_rows(rec: ResultRecord) -> list[tuple[str, str, str]]:
    """What a local disk held, how long its copy took and what crossed; empty for
    shared storage."""
    s, i = rec.storage, rec.integrity
    if s.disk is None:
        return []
    d = s.disk
    rows = []
    if s.chosen is not None:
        rows.append(("storage: auto chose", str(s.reason), "wanmig.model.storage"))
    rows += [
        ("storage: source disk", f"{_bytes(d.get('virtual_bytes'))} virtual, "
         f"{_bytes(d.get('allocated_bytes'))} allocated ({_bytes(d.get('overlay_bytes'))} in "
         f"the overlay), {_bytes(d.get('zero_bytes'))} zero", "qemu-img map"),
        ("storage: TLS (mutual x509)", _flag(s.tls), "scenario"),
        ("storage: copy ready / in sync / B running",
         f"{_ms(s.ready_ms)} / {_ms(s.total_ms)} / {_ms(s.time_to_dest_running_ms)}", "wanmig"),
        ("storage: disk bytes copied", _bytes(s.copied_bytes), "QEMU (block job)"),
        ("storage: bytes on the WAN", _bytes(s.bytes_on_wire), "site A (TCP payload)"),
        ("storage: left off the wire: zero / B held / compression",
         f"{_bytes(s.zero_bytes_skipped)} / {_bytes(s.dedup_bytes_skipped)} / "
         f"x{s.compress_ratio or 1:.2f}", f"transport {s.transport or 'qemu'}"),
    ]
    for label, w in (s.wancopy or {}).items():
        rows.append((f"storage: wancopy {label}",
                     f"{_bytes(w.get('image_bytes'))} considered, {_bytes(w.get('data_bytes'))} "
                     f"sent as data (x{w.get('compress_ratio') or 1:.2f} zstd), "
                     f"{_bytes(w.get('dedup_bytes'))} held by B, {_bytes(w.get('wire_bytes'))} "
                     f"on the WAN, {w.get('streams')} stream(s), "
                     f"{w.get('reconnects') or 0} reconnect(s)", "wanmig.storage.wancopy"))
    if s.bulk_bytes is not None or s.streamed_bytes is not None:
        rows.append(("storage: sent in bulk / streamed after B ran",
                     f"{_bytes(s.bulk_bytes)} / {_bytes(s.streamed_bytes)}"
                     f" in {_ms(s.stream_ms)}", "QEMU (backup, block-stream)"))
    if s.layer_ms is not None:
        rows.append(("storage: A's image put under B's disk", f"{_ms(s.layer_ms)} "
                     f"({', '.join(f'{k} {v:.0f}' for k, v in (s.layer_steps_ms or {}).items())}"
                     " ms)", "wanmig, before B ran"))
    if s.passes is not None:
        rows.append(("storage: passes / last delta", f"{s.passes} / {_bytes(s.last_delta_bytes)}",
                     "QEMU (backup jobs)"))
    if s.write_throttle_bps is not None:
        rows.append(("storage: guest writes throttled to",
                     f"{s.write_throttle_bps * 8 / 1e6:.2f} Mbit/s after "
                     f"{_ms(s.throttled_after_ms)}", "block_set_io_throttle"))
    if s.guest_io_writes is not None:
        rows.append(("storage: guest write latency p50 / p99 (before the copy)",
                     f"{_ms(s.guest_io_p50_ms)} / {_ms(s.guest_io_p99_ms)} "
                     f"({_ms(s.guest_io_before_p50_ms)} / {_ms(s.guest_io_before_p99_ms)})",
                     "guest (64 KiB O_DSYNC writes)"))
    if i.disk_match is not None:
        rows.append(("storage: disks at A and B match",
                     _flag(i.disk_match) + (f" (first difference at byte "
                                            f"{i.disk_first_difference})"
                                            if i.disk_first_difference is not None else ""),
                     f"qemu-img compare, {_ms(i.disk_verify_ms)} before B ran"))
    if i.disk_fsck_clean is not None:
        rows.append(("storage: B's filesystem",
                     "clean" if i.disk_fsck_clean else "; ".join(i.disk_fsck_problems or []),
                     "e2fsck -fn, after run"))
    return rows


def figure_rows(rec: ResultRecord) -> list[tuple[str, str, str]]:
    """The record's figures as (figure, value, measured by) rows."""
    wan = rec.wan
    rows = [
        ("WAN profile", wan_line(wan), f"scenario ({wan.backend or 'plain veth'})"),
        ("WAN RTT measured before the move", _ms(wan.rtt_measured_ms), "site A → site B"),
        ("guest", f"{rec.vm.ram_mib} MiB RAM, {rec.vm.workload}, {rec.vm.accel or '?'}", "scenario"),
        ("guest boot to ready", _ms(rec.vm.boot_ms), f"{rec.vm.accel or '?'}, at site A"),
        ("total migration time", _ms(rec.total_ms), "wanmig (phases)"),
        ("bytes on the WAN, everything", _bytes(rec.wan_bytes),
         "site A's uplink, prepare to finish"),
        ("memory strategy", rec.memory.strategy,
         "auto's choice" if "chosen" in (rec.memory.decision or {}) else "scenario"),
        *_decision_rows(rec),
        ("memory: TLS (mutual x509)", _flag(rec.memory.tls), "scenario"),
        ("memory: QEMU total time", _ms(rec.memory.total_ms), "QEMU"),
        ("memory: QEMU downtime", _ms(rec.memory.downtime_ms), "QEMU"),
        ("memory: bytes sent", _bytes(rec.memory.bytes), "QEMU"),
        ("memory: dirty-sync rounds", str(rec.memory.rounds or "–"), "QEMU"),
        ("memory: switched to postcopy", rec.memory.postcopy_reason or _flag(rec.memory.postcopy),
         "wanmig"),
        ("memory: pages faulted in over the WAN",
         "–" if rec.memory.postcopy_requests is None else str(rec.memory.postcopy_requests),
         "QEMU"),
        ("storage", rec.storage.strategy, rec.storage.note or ""),
        *_storage_rows(rec),
        *_budget_rows(rec),
        ("network mode", rec.network.mode, "scenario"),
        *_tunnel_rows(rec),
        ("client outage (largest UDP echo gap)", _ms(rec.network.client_outage_ms), "client"),
        ("long-lived TCP connection survived", _flag(rec.network.tcp_survived), "client"),
        ("new connection after the move", _ms(rec.network.new_conn_ms), "client"),
        ("client RTT before / after the move (path stretch)",
         f"{_ms(rec.network.rtt_before_ms)} / {_ms(rec.network.rtt_after_ms)}", "client"),
        ("UDP echoes lost around the switchover / in the run",
         f"{_count(rec.network.udp_lost_switchover)} / {_count(rec.network.udp_lost)}",
         "client (±1 s of the pause)"),
        ("new HTTP connections not done within 1 s", _count(rec.network.http_failed_1s),
         "client"),
        ("guest disk log records", str(rec.integrity.guest_log_records or "–"), "host, after run"),
        *([("application orders on the disk / missing",
            f"{rec.integrity.app_orders} (up to {rec.integrity.app_last_order}) / "
            f"{_count(rec.integrity.app_order_gaps)}", "Redis's file, after run")]
          if rec.integrity.app_orders is not None else []),
        ("guest disk log gaps / out of order / malformed",
         " / ".join(_count(v) for v in (rec.integrity.guest_log_gaps,
                                        rec.integrity.guest_log_out_of_order,
                                        rec.integrity.guest_log_malformed)), "host, after run"),
        ("guest disk writes at B", _count(rec.integrity.destination_disk_writes),
         "QEMU at B (blockstats)"),
        ("run states", " → ".join(s.name for s in rec.states) or "–", "wanmig (run state)"),
    ]
    extra = rec.model_extra or {}
    if extra.get("vm_lost"):
        rows.append(("VM LOST", str(extra.get("lost", "the destination died after it ran")),
                     "wanmig (run state)"))
    for fault in extra.get("faults") or []:
        rows.append((f"fault injected: {fault.get('fault')}",
                     f"at {fault.get('point')}, {_ms(fault.get('at_ms'))}", "scenario"))
    probe = rec.network.probe or {}
    if probe:
        every = rec.network.probe_interval_ms
        rows.append(("UDP echoes sent / answered"
                     + (f" (one every {every:g} ms)" if every is not None else ""),
                     f"{probe.get('udp_sent', '–')} / {probe.get('udp_received', '–')}", "client"))
        rows.append(("HTTP requests ok / failed",
                     f"{probe.get('http_ok', '–')} / {probe.get('http_failed', '–')}", "client"))
    rows.extend(_window_rows(rec.network.probe_windows or []))
    return rows


def phase_rows(rec: ResultRecord) -> list[tuple[str, str, str]]:
    """(phase, start, duration) rows."""
    return [(ph.name, _ms(ph.start_ms), _ms(ph.end_ms - ph.start_ms)) for ph in rec.phases]


def step_rows(rec: ResultRecord) -> list[tuple[str, str, str]]:
    """The switchover's steps from the source's STOP: (step, at, since the previous)."""
    rows, previous = [], None
    for name, at in (rec.switchover_timeline or {}).items():
        rows.append((name.replace("_", " "), _ms(at),
                     "" if previous is None else _ms(round(at - previous, 1))))
        previous = at
    return rows


def _rich_table(title: str, columns: tuple[str, ...], rows: list[tuple[str, str, str]],
                right: tuple[str, ...] = ()) -> Table:
    table = Table(show_header=True, header_style="bold", title=title)
    for col in columns:
        table.add_column(col, justify="right" if col in right else "left")
    for row in rows:   # plain text: an error's "[...]" is not markup
        table.add_row(*(Text(cell) for cell in row))
    return table


def render_record(rec: ResultRecord) -> Group:
    """Header line, a table of figures and the phase timeline."""
    head = Text.assemble(("wanmig ", "bold"), (rec.scenario.get("name", "?"), "bold cyan"),
                         "  status: ", (rec.status, _STATUS_STYLE.get(rec.status, "")))
    if rec.error:
        head.append(f"\nerror: {rec.error}", style="red")
    parts = [head,
             _rich_table("what happened", ("figure", "value", "measured by"),
                         figure_rows(rec), right=("value",)),
             _rich_table("phases", ("phase", "start", "duration"), phase_rows(rec),
                         right=("start", "duration"))]
    if rec.switchover_timeline:
        parts.append(_rich_table("switchover, from the source's STOP",
                                 ("step", "at", "since the previous"), step_rows(rec),
                                 right=("at", "since the previous")))
    return Group(*parts)
