"""Reports built from saved result records (never from live objects)."""

from .text import render_record

__all__ = ["render_record"]
