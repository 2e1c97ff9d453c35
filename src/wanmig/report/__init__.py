"""Reports built from saved results (never from live objects)."""

from .memory import render_memory_bench
from .text import render_record
from .wan import render_wan_bench

__all__ = ["render_memory_bench", "render_record", "render_wan_bench"]
