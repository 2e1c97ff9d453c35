"""Hostile input to what wanmig reads: malformed, truncated and oversized scenario files,
result records and bench documents give one clear error (``ConfigError``, exit 2 on the
command line), never a traceback, a hang or a file left behind."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from wanmig.cli import app
from wanmig.config import TABLES, Scenario, load_scenario, parse_scenario
from wanmig.errors import ConfigError

from .test_html_report import record

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12)
#: Real table and field names with arbitrary values: the validators' own edges.
FIELDS = {table: sorted(Scenario.model_fields[table].annotation.model_fields)  # type: ignore
          for table in TABLES}
tables = st.sampled_from(sorted(FIELDS)).flatmap(lambda table: st.tuples(
    st.just(table), st.dictionaries(st.sampled_from(FIELDS[table]), values, max_size=4)))


@SETTINGS
@given(st.dictionaries(st.text(max_size=12), values, max_size=5))
def test_any_scenario_data_is_valid_or_one_config_error(data: dict[str, Any]) -> None:
    try:
        parse_scenario(data)
    except ConfigError as exc:
        assert str(exc) and "\n" not in str(exc).strip()


@SETTINGS
@given(st.lists(tables, max_size=4))
def test_real_fields_with_any_values_are_valid_or_one_config_error(
        chosen: list[tuple[str, dict[str, Any]]]) -> None:
    try:
        parse_scenario(dict(chosen))
    except ConfigError as exc:
        assert exc.field is None or isinstance(exc.field, str)


@SETTINGS
@given(st.binary(max_size=400) | st.text(max_size=400).map(str.encode))
def test_any_scenario_file_is_valid_or_one_config_error(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.toml"
        path.write_bytes(content)
        try:
            load_scenario(path)
        except ConfigError as exc:
            assert str(exc)


def _saved_record() -> str:
    return record().model_dump_json()


@st.composite
def damaged(draw: Any) -> bytes:
    """A saved record or bench document cut short, with bytes flipped, or padded out."""
    base = draw(st.sampled_from([_saved_record(), json.dumps(
        {"kind": draw(st.sampled_from(["memory", "storage", "network", "demo", "seeds",
                                       "wan", "floor", "nope"])),
         "summary": draw(st.lists(st.dictionaries(st.sampled_from(["case", "runs", "figures"]),
                                                  values, max_size=3), max_size=2)),
         "results": draw(st.lists(st.dictionaries(st.text(max_size=8), values, max_size=3),
                                  max_size=2)),
         "checks": draw(st.lists(st.dictionaries(st.sampled_from(["check", "ok", "limit"]),
                                                 values, max_size=3), max_size=2))})]))
    raw = base.encode()
    how = draw(st.sampled_from(["cut", "flip", "pad", "same"]))
    if how == "cut":
        raw = raw[:draw(st.integers(0, len(raw)))]
    elif how == "flip":
        at = draw(st.integers(0, len(raw) - 1))
        raw = raw[:at] + bytes([raw[at] ^ draw(st.integers(1, 255))]) + raw[at + 1:]
    elif how == "pad":
        raw = raw + b" " * draw(st.integers(0, 200_000)) + draw(st.binary(max_size=20))
    return raw


@SETTINGS
@given(damaged())
def test_report_reads_a_damaged_file_or_says_why_in_one_line(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path, html = Path(tmp) / "doc.json", Path(tmp) / "doc.html"
        path.write_bytes(raw)
        result = CliRunner().invoke(app, ["report", str(path), "--html", str(html)])
        assert result.exit_code in (0, 2), (result.exit_code, result.output[-500:],
                                            repr(result.exception))
        if result.exit_code == 2:
            lines = result.output.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("wanmig: "), result.output
            assert not html.exists()
        else:
            assert html.stat().st_size > 0
        assert sorted(p.name for p in Path(tmp).iterdir() if p.name != "doc.json") in (
            [], ["doc.html"])
