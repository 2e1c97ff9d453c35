"""The migration's one bandwidth budget: shares, changes, the control file."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from wanmig.budget import Budget, budget_for, write_rate
from wanmig.config import BudgetSpec
from wanmig.errors import ConfigError, QemuError
from wanmig.memory.select import LinkFacts

MBIT = 1e6 / 8


def _budget(tmp_path: Path, mbit: float = 100, line: float = 100) -> Budget:
    return Budget(mbit * MBIT, line_bytes_s=line * MBIT, storage_share=0.25, run_dir=tmp_path,
                  source="test")


def _consumer(seen: list[int | None]):
    async def apply(rate: int | None) -> None:
        seen.append(rate)
    return apply


def test_one_consumer_gets_it_all_and_two_share(tmp_path: Path) -> None:
    b = _budget(tmp_path, mbit=40)
    mem: list[int | None] = []
    disk: list[int | None] = []

    async def go() -> None:
        await b.start("storage", _consumer(disk))          # the bulk copy, alone
        await b.start("memory", _consumer(mem))            # memory joins
        await b.stop("storage")                            # the pass ended
        await b.stop("memory")

    asyncio.run(go())
    assert disk == [int(40 * MBIT), int(10 * MBIT)]
    assert mem == [int(30 * MBIT), int(40 * MBIT)]
    assert [g["consumer"] for g in b.grants] == ["storage", "storage", "memory", "memory"]
    assert all(g["capped"] for g in b.grants)


def test_a_share_of_the_whole_link_caps_nothing(tmp_path: Path) -> None:
    b = _budget(tmp_path)
    seen: list[int | None] = []
    asyncio.run(b.start("memory", _consumer(seen)))
    assert seen == [None] and b.grants[0]["capped"] is False


def test_a_consumer_that_fails_does_not_stop_the_others(tmp_path: Path) -> None:
    b = _budget(tmp_path, mbit=40)
    seen: list[int | None] = []

    async def gone(rate: int | None) -> None:
        raise QemuError("job 'x' not found")

    async def go() -> None:
        await b.start("storage", gone)
        await b.start("memory", _consumer(seen))

    asyncio.run(go())
    assert seen == [int(30 * MBIT)]
    assert any("not found" in g.get("error", "") for g in b.grants)


def test_the_control_file_changes_the_rate_while_it_runs(tmp_path: Path) -> None:
    b = _budget(tmp_path, mbit=40)
    seen: list[int | None] = []

    async def go() -> None:
        await b.start("memory", _consumer(seen))
        watch = asyncio.create_task(b.watch())
        write_rate(tmp_path, 20)
        for _ in range(40):
            await asyncio.sleep(0.05)
            if len(seen) > 1:
                break
        watch.cancel()

    asyncio.run(go())
    assert seen == [int(40 * MBIT), int(20 * MBIT)]
    assert [(c["rate_mbit"], c["by"]) for c in b.changes] == [(40, "test"), (20, "budget file")]


def test_write_rate_refuses_nonsense(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="above 0"):
        write_rate(tmp_path, 0)
    with pytest.raises(ConfigError, match="still going"):
        write_rate(tmp_path / "gone", 10)


def test_the_default_budget_is_the_links_rate(tmp_path: Path) -> None:
    link = LinkFacts(rate_bit_s=100e6, rtt_ms=50, goodput_bit_s=93e6)
    b = budget_for(BudgetSpec(), link, tmp_path)
    assert b.mbit == 100 and b.changes[0]["by"] == "the link's rate"
    assert budget_for(BudgetSpec(rate_mbit=30), link, tmp_path).record()["rate_mbit"] == 30


def test_a_job_made_with_its_share_is_not_applied_twice(tmp_path: Path) -> None:
    b = _budget(tmp_path, mbit=40)
    mem: list[int | None] = []
    disk: list[int | None] = []

    async def go() -> int | None:
        await b.start("memory", _consumer(mem))
        await b.start("storage", _consumer(disk), apply_own=False)
        return b.granted("storage")

    assert asyncio.run(go()) == int(10 * MBIT)
    assert disk == [] and mem == [int(40 * MBIT), int(30 * MBIT)]
    assert [g["consumer"] for g in b.grants] == ["memory", "storage", "memory"]
    assert b.granted("nobody") is None
