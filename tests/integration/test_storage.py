"""The VM's local disk moved across the emulated WAN, end to end, on real QEMU and NBD.

Each site holds its own disk (``storage.disk.LocalDisks``): A a qcow2 overlay
on the base, B what the strategy fills.  Every run checks the disks with
verify on (both compared block by block before B ran), B's filesystem with
e2fsck after the run, the guest's integrity log, and that nothing is left.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest

from wanmig import registry
from wanmig.budget import write_rate
from wanmig.config import parse_scenario
from wanmig.orchestrator import Orchestrator
from wanmig.record import ResultRecord

pytestmark = [pytest.mark.root, pytest.mark.qemu]

SMALL_VM = {"ram_mib": 192, "disk_mib": 64}


async def _run(name: str, storage: dict[str, Any], **tables: Any) -> ResultRecord:
    data: dict[str, Any] = {"name": name, "vm": SMALL_VM,
                            "memory": {"strategy": "precopy-tuned", "verify": True},
                            "storage": {"verify": True, **storage}, **tables}
    return await Orchestrator(parse_scenario(data)).run()


def _disk_intact(rec: ResultRecord) -> None:
    i = rec.integrity
    assert i.disk_match is True and i.disk_first_difference is None
    assert i.disk_verify_ms is not None
    assert i.disk_fsck_clean is True, i.disk_fsck_problems
    assert i.ok and i.guest_log_gaps == 0 and i.guest_log_out_of_order == 0
    assert i.destination_disk_writes and i.destination_disk_writes > 0


def _streamed_disk_intact(rec: ResultRecord, strategy: str) -> None:
    """A postcopy-family run: completed, B's disk whole after the stream."""
    assert rec.status == "completed", rec.error
    i = rec.integrity
    # B's disk is A's through the WAN until the stream ends: nothing to compare before
    assert i.disk_match is None and i.disk_verify_note and "not compared" in i.disk_verify_note
    assert i.disk_fsck_clean is True, i.disk_fsck_problems
    assert i.ok and i.guest_log_gaps == 0 and i.guest_log_out_of_order == 0
    assert i.destination_disk_writes and i.destination_disk_writes > 0
    s = rec.storage
    assert s.strategy == strategy and s.tls is True and s.disk


async def test_mirror_with_synchronous_writes_moves_the_disk_over_tls(
        leaves_nothing_behind) -> None:
    rec = await _run("mirror-sync", {"strategy": "mirror", "synchronous_writes": True})

    assert rec.status == "completed", rec.error
    _disk_intact(rec)
    s = rec.storage
    assert s.strategy == "mirror" and s.tls is True
    assert s.disk and s.disk["virtual_bytes"] == SMALL_VM["disk_mib"] * 2**20
    assert s.disk["allocated_bytes"] > 0 and s.disk_bytes == s.disk["allocated_bytes"]
    # sync=full reads the whole disk, base included; what crossed is TLS on TCP
    assert s.copied_bytes is not None and s.copied_bytes >= s.disk["virtual_bytes"]
    assert s.bytes_on_wire is not None and s.bytes_on_wire >= s.disk["allocated_bytes"]
    assert s.ready_ms is not None and s.total_ms is not None and s.ready_ms <= s.total_ms
    assert s.time_to_dest_running_ms is not None and s.time_to_dest_running_ms > s.total_ms
    # the guest kept writing through the copy: its log was read from B's own disk
    assert rec.integrity.guest_log_records and rec.integrity.guest_log_records > 100


async def test_mirror_that_never_gets_ready_rolls_back_to_a_vm_that_never_left(
        leaves_nothing_behind) -> None:
    # libvirt's default copy mode: a guest writing every 10 ms over a 50 ms RTT keeps
    # the mirror one write behind, so it never reports ready (see docs/design.md)
    rec = await _run("mirror-timeout", {"strategy": "mirror", "timeout_s": 5})

    assert rec.status == "rolled_back"
    assert rec.error and "not ready after 5 s" in rec.error
    assert rec.model_extra and rec.model_extra["source_state_after_rollback"] == "running"
    assert rec.network.new_conn_ms is not None
    # the log was read from A's disk, where the guest still runs
    assert rec.integrity.ok and rec.integrity.guest_log_gaps == 0
    assert rec.storage.time_to_dest_running_ms is None


async def test_storage_channel_refuses_a_destination_of_another_ca(
        leaves_nothing_behind) -> None:
    rec = await _run("mirror-foreign", {"strategy": "mirror", "synchronous_writes": True},
                     fault={"destination_cert": "foreign-ca"})

    assert rec.status == "rolled_back"
    assert rec.error and "over NBD" in rec.error
    assert rec.storage.total_ms is None    # no block job ever started
    assert rec.model_extra and rec.model_extra["source_state_after_rollback"] == "running"


async def test_precopy_sends_only_what_the_guest_wrote(leaves_nothing_behind) -> None:
    rec = await _run("precopy", {"strategy": "precopy"})

    assert rec.status == "completed", rec.error
    _disk_intact(rec)
    s = rec.storage
    assert s.strategy == "precopy" and s.tls is True and s.disk
    # B holds the base: the passes move what the guest wrote at A, never the whole
    # disk (mirror's sync=full reads all of it: its copied_bytes >= virtual_bytes)
    assert s.passes is not None and s.passes >= 2     # the bulk pass and the paused one
    assert s.copied_bytes is not None and s.copied_bytes < s.disk["virtual_bytes"] // 8
    assert s.last_delta_bytes is not None and s.last_delta_bytes < 2**20
    assert s.write_throttle_bps is None               # an idle guest needs no throttle
    assert s.bytes_on_wire is not None and s.bytes_on_wire >= s.copied_bytes


async def test_precopy_over_a_debian_base_leaves_the_base_at_home(leaves_nothing_behind) -> None:
    # a real Debian root (tools/debian-rootfs, built by make setup) in a 1 GiB base both
    # sites hold: ~200 MB allocated, of which the guest wrote well under 1 MB
    rec = await _run("precopy-debian", {"strategy": "precopy"},
                     vm={**SMALL_VM, "base": "debian", "disk_mib": 1024})

    assert rec.status == "completed", rec.error
    _disk_intact(rec)
    s = rec.storage
    assert s.disk and s.disk["allocated_bytes"] > 100 * 2**20
    assert s.disk["overlay_bytes"] < 2**20
    assert s.bytes_on_wire is not None and s.bytes_on_wire < s.disk["allocated_bytes"] // 100


async def test_precopy_resumes_where_it_stopped_after_a_link_outage(
        leaves_nothing_behind) -> None:
    # the guest's 16 MiB rewrite file is in A's overlay: the bulk pass takes seconds
    rec = await _run("precopy-outage", {"strategy": "precopy"},
                     vm={**SMALL_VM, "disk_write_mbps": 1.0, "disk_write_mib": 16},
                     fault={"link_down_phase": "storage", "link_down_s": 10})

    assert rec.status == "completed", rec.error
    _disk_intact(rec)
    faults = (rec.model_extra or {}).get("faults") or []
    assert [f["fault"] for f in faults][:2] == ["link_down", "link_up"]
    assert faults[0]["point"] == "storage-progress"
    s = rec.storage
    # it waited the outage out and went on: not restarted from zero
    assert s.ready_ms is not None and s.ready_ms >= 10_000
    assert s.copied_bytes is not None and s.copied_bytes < 2 * 17 * 2**20
    assert s.guest_io_writes and s.guest_io_writes > 0


async def test_postcopy_runs_b_at_once_and_streams_the_overlay_after(
        leaves_nothing_behind) -> None:
    # QEMU's transport, fetch: A's image crosses whole with nbdcopy, then the stream is local
    rec = await _run("postcopy-disk", {"strategy": "postcopy", "fetch": True,
                                       "transport": "qemu"},
                     vm={**SMALL_VM, "disk_write_mbps": 1.0, "disk_write_mib": 16})

    _streamed_disk_intact(rec, "postcopy")
    s = rec.storage
    # B ran right after memory, not after the disk: the stream came later
    assert s.time_to_dest_running_ms is not None and s.total_ms is not None
    assert s.time_to_dest_running_ms < s.total_ms
    assert s.layer_ms is not None and s.stream_ms is not None
    assert s.fetch_ms is not None and s.fetch_bytes is not None
    assert s.fetch_bytes >= 0.9 * s.disk["overlay_bytes"]
    # the stream copied A's overlay: what the guest wrote there, before and after prepare
    assert s.streamed_bytes is not None and s.copied_bytes == s.streamed_bytes
    assert s.streamed_bytes >= s.disk["overlay_bytes"]
    # A's overlay (the rewriter's 16 MiB file) crossed whole in the fetch (A's interface
    # counted it, headers included), and little besides; the base did not
    assert s.bytes_on_wire is not None
    assert s.disk["overlay_bytes"] <= s.bytes_on_wire < 1.2 * s.disk["overlay_bytes"] + 8 * 2**20


async def test_hybrid_sends_the_bulk_first_and_leaves_only_later_writes_to_b(
        leaves_nothing_behind) -> None:
    rec = await _run("hybrid-disk", {"strategy": "hybrid", "transport": "qemu"},
                     vm={**SMALL_VM, "disk_write_mbps": 1.0, "disk_write_mib": 16})

    _streamed_disk_intact(rec, "hybrid")
    s = rec.storage
    # the bulk is what A's guest had written when the copy began (the rewriter's file),
    # sent before memory; B ran, then streamed only what the guest wrote after that
    assert s.bulk_bytes is not None and s.bulk_bytes >= 0.9 * s.disk["overlay_bytes"]
    assert s.ready_ms is not None and s.time_to_dest_running_ms is not None
    assert s.ready_ms < s.time_to_dest_running_ms < s.total_ms
    assert s.fetch_ms is None            # the stream read over NBD (no fetch by default)
    assert s.streamed_bytes is not None and 0 < s.streamed_bytes < s.bulk_bytes
    assert s.copied_bytes == s.bulk_bytes + s.streamed_bytes
    assert s.layer_steps_ms and set(s.layer_steps_ms) >= {"snapshot", "open_overlay"}
    # the bulk crossed once (no passes), the base never did
    assert s.bytes_on_wire is not None
    assert s.bulk_bytes <= s.bytes_on_wire < s.copied_bytes + 8 * 2**20


async def test_hybrid_over_wancopy_sends_the_bulk_and_the_fetch_smaller(
        leaves_nothing_behind) -> None:
    rec = await _run("hybrid-wancopy", {"strategy": "hybrid", "transport": "wancopy"},
                     vm={**SMALL_VM, "disk_write_mbps": 1.0, "disk_write_mib": 16})

    _streamed_disk_intact(rec, "hybrid")
    s = rec.storage
    assert s.transport == "wancopy" and s.wancopy and set(s.wancopy) == {"bulk", "fetch"}
    bulk, fetch = s.wancopy["bulk"], s.wancopy["fetch"]
    # the bulk is the rewriter's file as A's guest had written it, the fetch what it
    # wrote after: both crossed zstd-compressed (the rewriter writes text: ~2.6:1)
    assert bulk["image_bytes"] >= 0.9 * s.disk["overlay_bytes"] and fetch["image_bytes"] > 0
    assert s.compress_ratio and s.compress_ratio > 1.5
    assert s.ready_ms is not None and s.ready_ms < s.time_to_dest_running_ms < s.total_ms
    assert s.fetch_ms is not None and s.fetch_bytes == fetch["wire_bytes"]
    assert s.bytes_on_wire is not None and s.copied_bytes is not None
    assert s.bytes_on_wire < 0.8 * s.copied_bytes
    assert s.zero_bytes_skipped and s.dedup_bytes_skipped is not None


async def test_wancopy_refuses_a_destination_of_another_ca(leaves_nothing_behind) -> None:
    rec = await _run("wancopy-foreign", {"strategy": "hybrid", "transport": "wancopy"},
                     fault={"destination_cert": "foreign-ca"})

    assert rec.status == "rolled_back"
    assert rec.error and "wancopy" in rec.error and "certificate" in rec.error.lower(), rec.error
    assert rec.storage.bulk_bytes is None    # nothing was copied
    assert rec.model_extra and rec.model_extra["source_state_after_rollback"] == "running"
    assert rec.integrity.ok and rec.integrity.guest_log_gaps == 0


async def test_auto_measures_the_disk_and_runs_precopy_for_a_quiet_guest(
        leaves_nothing_behind) -> None:
    rec = await _run("auto-quiet", {"strategy": "auto"})

    assert rec.status == "completed", rec.error
    _disk_intact(rec)
    s = rec.storage
    assert s.strategy == "auto" and s.chosen == "precopy" and s.reason
    assert s.passes is not None              # the chosen part's own fields are there
    m = s.measurements
    assert m and m["overlay_bytes"] > 0 and m["drain_bytes_s"] > 0
    # only the integrity log is written: far below the link
    assert m["dirty_bytes_s"] < 0.1 * m["drain_bytes_s"]
    assert s.predictions and {p["strategy"] for p in s.predictions} == {
        "mirror", "precopy", "hybrid", "postcopy"}
    assert s.predicted and s.predicted["strategy"] == "precopy"


async def test_auto_runs_hybrid_when_the_guest_writes_near_the_links_rate(
        leaves_nothing_behind) -> None:
    # 20 Mbit/s drains ~2.3 MB/s; the guest rewrites its 16 MiB file at 1 MB/s (more
    # new 64 KiB blocks per second, its writes not aligned to them): precopy would need
    # too many passes and throttle the guest; postcopy would stream the whole overlay
    # after B runs, hybrid only what was written after its bulk began
    rec = await _run("auto-busy", {"strategy": "auto"},
                     vm={**SMALL_VM, "disk_write_mbps": 1.0, "disk_write_mib": 16},
                     wan={"rate_mbit": 20})

    assert rec.status == "completed", rec.error
    s = rec.storage
    assert s.chosen == "hybrid", s.reason
    assert s.measurements and s.measurements["dirty_bytes_s"] > 0.5e6
    assert s.measurements["memory_s_from"] == "the memory part's prediction"
    assert s.bulk_bytes and s.streamed_bytes is not None
    # the chosen hybrid ran on its default transport: both frozen images over wancopy
    assert s.transport == "wancopy" and s.wancopy and set(s.wancopy) == {"bulk", "fetch"}
    i = rec.integrity
    assert i.disk_fsck_clean is True, i.disk_fsck_problems
    assert i.ok and i.guest_log_gaps == 0 and i.guest_log_out_of_order == 0


async def test_one_budget_caps_the_disk_and_changes_while_the_run_goes_on(
        leaves_nothing_behind) -> None:
    # 16 Mbit/s for the whole migration; once the bulk pass runs, `wanmig budget` raises
    # it to 48: the pass's share is applied again, and the record says who changed what
    sc = parse_scenario({"name": "budget", "vm": {**SMALL_VM, "disk_write_mbps": 1.0},
                         "memory": {"strategy": "precopy-tuned"},
                         "storage": {"strategy": "precopy"}, "budget": {"rate_mbit": 16}})
    orch = Orchestrator(sc)
    run = asyncio.create_task(orch.run())
    while not (orch.clock.current and orch.clock.current[0] == "storage"):
        assert not run.done(), run.result().error
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)        # into the bulk pass (its 16 MiB take ~9 s at 16 Mbit/s)
    assert orch.registry is not None
    write_rate(orch.registry.run_dir, 48)
    rec = await run

    assert rec.status == "completed", rec.error
    b = rec.budget
    assert b is not None and b["rate_mbit"] == 48
    assert [(c["rate_mbit"], c["by"]) for c in b["changes"]] == [(16, "scenario"),
                                                                  (48, "budget file")]
    disk = [g["rate_mbit"] for g in b["grants"] if g["consumer"] == "storage" and g["capped"]]
    assert disk[0] == 16 and 48 in disk and not any("error" in g for g in b["grants"])
    # memory alone got the whole budget; with a disk pass beside it, the rest of it
    memory = {g["rate_mbit"] for g in b["grants"] if g["consumer"] == "memory"}
    assert 48 in memory and memory <= {48, 36}
    # the bulk pass ran at the budget, not the link's 100 Mbit/s: slower than 16 MiB
    # at 48 Mbit/s after the first second at 16
    assert rec.storage.ready_ms is not None and rec.storage.ready_ms > 3000


async def test_the_debian_guest_runs_its_app_and_its_orders_cross_with_the_disk(
        leaves_nothing_behind) -> None:
    data: dict[str, Any] = {
        "name": "debian-app",
        "vm": {"ram_mib": 256, "disk_mib": 1024, "base": "debian", "root": "debian",
               "workload": "app", "web_rps": 10},
        "memory": {"strategy": "precopy-tuned"}, "storage": {"strategy": "hybrid"}}
    rec = await Orchestrator(parse_scenario(data)).run()

    assert rec.status == "completed", rec.error
    assert rec.vm.boot_ms is not None          # the Debian root's boot, under TCG here
    detail = rec.vm.workload_detail or {}
    assert detail.get("paths") and "/app/order" in detail["paths"]
    web = detail.get("report") or {}
    assert web.get("ok", 0) > 20, web      # orders answered through nginx, app and Redis
    i = rec.integrity
    assert i.ok and i.guest_log_gaps == 0 and i.disk_fsck_clean is True, i.disk_fsck_problems
    s = rec.storage
    assert s.transport == "wancopy"            # hybrid's default transport
    # the overlay holds what the Debian guest wrote (Redis's file, nginx's log, ...)
    assert s.disk and s.disk["overlay_bytes"] > 0 and s.bulk_bytes
    # Redis kept the orders on the disk that moved: numbered from 1, none missing up
    # to the last it wrote (appendfsync everysec: the last second may be absent)
    assert i.app_orders and i.app_first_order == 1 and i.app_order_gaps == 0
    assert i.app_orders >= 0.5 * web["ok"] * 3 / 4


async def test_a_destination_without_room_is_refused_before_anything_is_copied(
        leaves_nothing_behind, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the run directories (both sites' disks) on a real 96 MiB tmpfs; mirror sends the
    # Debian base's ~200 MB to B, which cannot hold it
    tiny = tmp_path / "state"
    tiny.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m,mode=0700", "tmpfs", str(tiny)],
                   check=True)
    try:
        monkeypatch.setattr(registry, "STATE_DIR", tiny)
        rec = await _run("no-room", {"strategy": "mirror", "synchronous_writes": True},
                         vm={**SMALL_VM, "base": "debian", "disk_mib": 1024})
    finally:
        subprocess.run(["umount", str(tiny)], check=True)

    assert rec.status == "rolled_back"
    assert rec.error and "MiB free; the disk needs" in rec.error, rec.error
    assert rec.storage.total_ms is None          # no copy ever started
    assert rec.model_extra and rec.model_extra["source_state_after_rollback"] == "running"
    assert rec.integrity.ok and rec.integrity.guest_log_gaps == 0


@pytest.mark.parametrize("transport", ["qemu", "wancopy"])
async def test_hybrid_bulk_resumes_where_it_stopped_after_a_link_outage(
        leaves_nothing_behind, transport: str) -> None:
    # 16 Mbit/s: the bulk takes seconds, and the outage falls inside it; the fetch asked
    # for cannot run over QEMU's transport under that budget (nbdcopy takes no rate)
    rec = await _run(f"hybrid-outage-{transport}", {"strategy": "hybrid", "fetch": True,
                                                    "transport": transport},
                     vm={**SMALL_VM, "disk_write_mbps": 1.0, "disk_write_mib": 16},
                     budget={"rate_mbit": 16},
                     fault={"link_down_phase": "storage", "link_down_s": 10})

    _streamed_disk_intact(rec, "hybrid")
    faults = (rec.model_extra or {}).get("faults") or []
    assert [f["fault"] for f in faults][:2] == ["link_down", "link_up"]
    s = rec.storage
    # the bulk waited the outage out and went on: its bytes crossed once, not twice
    # (wancopy's compressed: less than the disk bytes it moved)
    assert s.ready_ms is not None and s.ready_ms >= 10_000
    assert s.bulk_bytes is not None and s.bytes_on_wire is not None and s.copied_bytes
    bound = s.copied_bytes if transport == "wancopy" else 1.5 * s.copied_bytes + 8 * 2**20
    assert s.bytes_on_wire < bound
    if transport == "qemu":   # said, not skipped silently
        assert s.fetch_ms is None and s.fetch_skipped and "16 Mbit/s" in s.fetch_skipped
    else:                     # wancopy takes the budget's rate: it fetched
        assert s.fetch_ms is not None and s.fetch_skipped is None


async def test_postcopy_memory_with_a_local_disk_moves_both(leaves_nothing_behind) -> None:
    # memory after the switchover, the disk before it: B faults pages in over the WAN
    # while its disk is already its own
    rec = await _run("postcopy-mem-precopy-disk", {"strategy": "precopy"},
                     memory={"strategy": "postcopy", "verify": True})

    assert rec.status == "completed", rec.error
    assert rec.memory.strategy == "postcopy" and rec.memory.postcopy
    i = rec.integrity
    assert i.disk_match is True and i.disk_fsck_clean is True, i.disk_fsck_problems
    assert i.ok and i.guest_log_gaps == 0 and i.guest_log_out_of_order == 0
    assert i.destination_disk_writes and i.destination_disk_writes > 0
