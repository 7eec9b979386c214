"""One WebSocket message scored by the core's scoring (omni_mev.core.scoring), as /predict and /predict/batch are.

A message is a JSON object: one opportunity shaped like a /predict body, or
several under `items` shaped like a /predict/batch body; either may carry an
`id`, which its answer echoes. The answer is the HTTP answer's body with that
`id`, or the API's error shape ({"error", "message"[, "fields"]}) with it.
"""
from __future__ import annotations

from typing import Any

from omni_mev.core.answers import Answer, Later, error_status_and_body
from omni_mev.core.schemas import ID_MAX_LENGTH
from omni_mev.core.scoring import score_batch, score_one
from omni_mev.errors import BadRequest, ValidationFailed
from omni_mev.jsonio import loads_object
from omni_mev.predictor import Predictor

ID = "id"


def message_id(message: dict[str, Any]) -> Any:
    """The caller's `id`, taken out of the message: a string of at most ID_MAX_LENGTH characters, a number, or
    none."""
    ident = message.pop(ID, None)
    if ident is None or isinstance(ident, (int, float)) and not isinstance(ident, bool):
        return ident
    if isinstance(ident, str) and len(ident) <= ID_MAX_LENGTH:
        return ident
    rule = f"a string of at most {ID_MAX_LENGTH} characters or a number"
    raise ValidationFailed(f"id must be {rule}.", fields={ID: [f"Must be {rule}."]})


def parse(raw: str | bytes) -> dict[str, Any]:
    """The message as a JSON object (the rules of an HTTP body), or a BadRequest saying why not."""
    if isinstance(raw, bytes):
        raise BadRequest("Binary frames are not part of this protocol; send each message as JSON text.")
    return loads_object(raw)


def score(predictor: Predictor, message: dict[str, Any], raw: str) -> dict[str, Any] | Later:
    """The answer's body, or one that waits on its dispatches (as the HTTP routes' answers do)."""
    if "items" in message:
        return score_batch(predictor, message, raw)
    return score_one(predictor, message)


def with_id(body: dict[str, Any] | Answer, ident: Any) -> dict[str, Any]:
    """An answer's body with the message's id first."""
    if isinstance(body, Answer):
        body = body.body if isinstance(body.body, dict) else {}
    return body if ident is None else {ID: ident, **body}


def error_answer(error: BaseException, ident: Any) -> tuple[int, dict[str, Any]]:
    """An error's status, and its body in the API's error shape with the message's id; a bug logged, its cause not
    told."""
    status, body = error_status_and_body(error)
    return status, with_id(body, ident)
