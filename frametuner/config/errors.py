"""Configuration errors: one line per problem, naming the file, the key and the fix."""

from __future__ import annotations

import difflib
from typing import Iterable


class ConfigError(ValueError):
    """Raised for bad configuration; ``messages`` holds one line per problem."""

    def __init__(self, messages: Iterable[str]):
        self.messages = list(messages)
        super().__init__("\n".join(self.messages))


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{match[0]}'?" if match else ""


def format_pydantic_errors(error, source: str, known_keys: Iterable[str], prefix: str = "") -> list[str]:
    """Turn a pydantic ``ValidationError`` into one-line messages."""
    known = list(known_keys)
    lines = []
    for item in error.errors(include_url=False):
        loc = [str(part) for part in item["loc"]]
        key = ".".join(loc) if loc else "(top level)"
        kind = item["type"]
        value = item.get("input")
        where = f"{source}: {prefix}'{key}'"
        if kind == "extra_forbidden":
            lines.append(f"{where}: unknown key{did_you_mean(loc[-1], known)} (remove it or fix the spelling)")
        elif kind == "missing":
            lines.append(f"{where}: required key is missing; add it")
        elif kind in ("value_error", "assertion_error"):
            message = str(item["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
            lines.append(f"{where}: {message}")
        elif kind == "literal_error":
            expected = item.get("ctx", {}).get("expected", "")
            lines.append(f"{where}: {value!r} is not allowed; use one of {expected}")
        else:
            lines.append(f"{where}: {item['msg'].lower()}, got {value!r}")
    return lines
