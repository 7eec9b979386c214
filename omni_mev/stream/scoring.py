"""One stream message scored, whatever the transport: the rules and encoders of /predict and /predict/batch.

A message is a JSON object: one opportunity shaped like a /predict body, or
several under `items` shaped like a /predict/batch body; either may carry an
`id`, which its answer echoes. The answer is the HTTP answer's body with that
`id`, or the API's error shape ({"error", "message"[, "fields"]}) with it.
"""
from __future__ import annotations

import logging
from typing import Any

from omni_mev.api import batch, predict
from omni_mev.api.direct import Answer, Later
from omni_mev.api.errors import api_error_body
from omni_mev.errors import INTERNAL_ERROR, BadRequest, OmniMevError, ValidationFailed
from omni_mev.jsonio import loads_object
from omni_mev.predictor import Predictor
from omni_mev.schemas import ID_MAX_LENGTH, load_opportunity, load_or_raise

log = logging.getLogger(__name__)
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
    threshold, mode = predictor.threshold, predictor.settings.mode
    if "items" in message:
        items = message["items"]
        if isinstance(items, list):
            batch.check_batch_size(len(items), predictor.settings.max_batch_size)
        opportunities = load_or_raise(batch.schema_for(raw), message)["items"]
        return predict.answer_when_dispatched(predictor.predict_batch(opportunities),
                                              lambda answered: batch.encode(answered, threshold, mode))
    return predict.answer_when_dispatched(predictor.predict(load_opportunity(message)),
                                          lambda answered: predict.encode(answered, threshold, mode))


def with_id(body: dict[str, Any] | Answer, ident: Any) -> dict[str, Any]:
    """An answer's body with the message's id first."""
    if isinstance(body, Answer):
        body = body.body if isinstance(body.body, dict) else {}
    return body if ident is None else {ID: ident, **body}


def error_answer(error: BaseException, ident: Any) -> dict[str, Any]:
    """An error as the API's error shape, with the message's id; a bug logged, its cause not told."""
    if isinstance(error, OmniMevError):
        return with_id(api_error_body(error), ident)
    log.error("unhandled error scoring a stream message", exc_info=error)
    return with_id(dict(INTERNAL_ERROR), ident)
