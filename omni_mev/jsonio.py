"""JSON with orjson: several times faster than the standard library on the hot path."""
from __future__ import annotations

from typing import Any

import orjson

from omni_mev.errors import BadRequest

_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
               type(None): "null"}
_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def loads_object(data: bytes | str) -> dict[str, Any]:
    """Parse a request body that must be a JSON object; 400 otherwise."""
    if not data:
        raise BadRequest("The body is empty; send a JSON object.")
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        # orjson follows RFC 8259: NaN and Infinity are not JSON and land here too.
        raise BadRequest(f"The body is not valid JSON (NaN and Infinity are not JSON either): {error}.") from None
    if value.__class__ is not dict:
        raise BadRequest(f"The body must be a JSON object, not {_JSON_TYPES.get(type(value), 'a value')}.")
    return value


def dumps(value: Any) -> bytes:
    """A response body; numpy scalars and arrays included."""
    return orjson.dumps(value, option=_OPTIONS)
