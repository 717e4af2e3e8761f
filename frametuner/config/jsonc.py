"""JSON with comments (``//``, ``/* */``) and trailing commas, as users write config files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import ConfigError


def strip_jsonc(text: str) -> str:
    """Remove comments and trailing commas outside strings; keeps line numbers intact."""
    out: list[str] = []
    i, n = 0, len(text)
    in_string = False
    while i < n:
        ch = text[i]
        if in_string:
            out.append(ch)
            if ch == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 2
                continue
            if ch == '"':
                in_string = False
            i += 1
        elif ch == '"':
            in_string = True
            out.append(ch)
            i += 1
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end == -1 else end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end == -1:
                raise ValueError("unterminated /* comment")
            out.append("".join(c if c == "\n" else " " for c in text[i : end + 2]))
            i = end + 2
        else:
            out.append(ch)
            i += 1
    return _drop_trailing_commas("".join(out))


def _drop_trailing_commas(text: str) -> str:
    out = list(text)
    in_string = False
    i = 0
    while i < len(out):
        ch = out[i]
        if in_string:
            if ch == "\\":
                i += 2
                continue
            if ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == ",":
            j = i + 1
            while j < len(out) and out[j] in " \t\r\n":
                j += 1
            if j < len(out) and out[j] in "]}":
                out[i] = " "
        i += 1
    return "".join(out)


def loads_jsonc(text: str, source: str = "<string>") -> Any:
    try:
        return json.loads(strip_jsonc(text))
    except json.JSONDecodeError as error:
        raise ConfigError([f"{source}:{error.lineno}:{error.colno}: not valid JSON: {error.msg}"]) from None
    except ValueError as error:
        raise ConfigError([f"{source}: not valid JSON: {error}"]) from None


def load_jsonc(path: str | Path) -> Any:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text; save the file as UTF-8"]) from None
    return loads_jsonc(text, str(path))
