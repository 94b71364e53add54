"""How a wrong value looks in a refusal's reason: shared by every decoder that explains what it refused
(the Kafka record codec, the MQTT payload codecs), so their reasons read the same. Pure, no I/O."""
from __future__ import annotations

from typing import Any

_JSON_NAMES = {type(None): "null", bool: "boolean", int: "integer", float: "number", str: "string",
               list: "array", dict: "object"}
EXCERPT_CHARS = 40


def json_kind(value: Any) -> str:
    """The JSON type name of a decoded value and, for a scalar, a short excerpt of it."""
    name = _JSON_NAMES.get(type(value), type(value).__name__)
    if value is None or isinstance(value, (list, dict)):
        return name
    text = repr(value)
    return f"{name} {text[:EXCERPT_CHARS]}{'…' if len(text) > EXCERPT_CHARS else ''}"
