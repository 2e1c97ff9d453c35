"""Reports built from saved results (never from live objects)."""

from __future__ import annotations

from typing import Any

from rich.console import Group

from .demo import render_demo
from .faults import render_faults_bench
from .floor import render_floor_bench
from .memory import render_memory_bench
from .network import render_network_bench
from .seeds import render_seeds_bench
from .storage import render_storage_bench
from .text import render_record
from .tunnel import render_tunnel_bench
from .wan import render_wan_bench

BENCH_RENDERERS = {"memory": render_memory_bench, "wan": render_wan_bench,
                   "floor": render_floor_bench, "storage": render_storage_bench,
                   "network": render_network_bench, "demo": render_demo,
                   "seeds": render_seeds_bench, "faults": render_faults_bench,
                   "tunnel": render_tunnel_bench}


def render_bench(doc: dict[str, Any]) -> Group:
    """The table of a ``wanmig bench`` document, whichever its kind."""
    try:
        render = BENCH_RENDERERS[doc["kind"]]
    except KeyError:
        raise ValueError(f"not a bench document of a known kind: {doc.get('kind')!r}") from None
    return render(doc)


__all__ = ["BENCH_RENDERERS", "render_bench", "render_floor_bench", "render_memory_bench",
           "render_network_bench", "render_record", "render_storage_bench", "render_wan_bench"]
