"""From a pydantic ``ValidationError`` to the one-line ``ConfigError`` a user sees.

Scenarios and link profiles are both validated by pydantic; both report the
first problem only, naming the setting (``vm.ram_mib``, ``wan.rtt_ms``) and
saying what was wrong with the value given.
"""

from __future__ import annotations

from pydantic import ValidationError

from .errors import ConfigError


def config_error(exc: ValidationError, prefix: str = "", *,
                 missing: str | None = None) -> ConfigError:
    """The first error of ``exc`` as a ConfigError whose field is ``prefix.<location>``.

    An unknown key reads "unknown setting"; a missing one reads ``missing``
    (pydantic's own message if None); a bad plain value is quoted after the
    message.
    """
    err = exc.errors()[0]
    # a key is shown as written where it is a plain name, else quoted (a newline in a
    # key must not break the one line the user sees)
    location = ".".join(str(p) if str(p).isprintable() and " " not in str(p) else repr(p)
                        for p in err["loc"])
    field = ".".join(part for part in (prefix, location) if part) or None
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown setting"
    elif err["type"] == "missing" and missing is not None:
        msg = missing
    elif "input" in err and not isinstance(err["input"], (dict, list)):
        msg = f"{msg} (got {err['input']!r})"
    return ConfigError(msg, field=field)
