"""POST /outcomes: what happened to the opportunities the service judged, into the ledger."""
from __future__ import annotations

from typing import Any

import orjson
from flask import Blueprint, current_app, request

from omni_mev import metrics
from omni_mev.api import predictor_of
from omni_mev.api.batch import check_batch_size
from omni_mev.api.direct import read_body
from omni_mev.api.errors import json_response
from omni_mev.errors import BadRequest
from omni_mev.ledger.store import (CONFLICT, DUPLICATE, INVALID, RETRY_UNKNOWN_AFTER_S, STORED, UNKNOWN,
                                   OutcomeResult)
from omni_mev.schemas import OutcomeSchema, load_or_raise

bp = Blueprint("outcomes", __name__)
_one = OutcomeSchema()
_many = OutcomeSchema(many=True)
RESULT_NAMES = {STORED: "stored", DUPLICATE: "duplicate", UNKNOWN: "unknown", CONFLICT: "conflict",
                INVALID: "invalid"}
ERROR_CODES = {UNKNOWN: "unknown_opportunity", CONFLICT: "conflict", INVALID: "validation_error"}
# An unknown id is answered at once; its prediction may be a moment from the database (docs/api.md).
RETRY_HEADERS = {"Retry-After": str(RETRY_UNKNOWN_AFTER_S)}


def _body() -> Any:
    raw = read_body(request.environ, current_app.config["SETTINGS"].max_body_bytes)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise BadRequest(f"The body is not valid JSON: {error}.") from None


def _item(result: OutcomeResult) -> dict[str, Any]:
    return {"opportunity_id": result.opportunity_id, "result": RESULT_NAMES[result.status],
            "status": result.status, "message": result.message}


@bp.post("/outcomes")
def post_outcomes():
    """One outcome (an object) or up to AI_MAX_BATCH_SIZE (an array); idempotent per opportunity_id."""
    body = _body()
    predictor = predictor_of(current_app)
    if isinstance(body, list):
        check_batch_size(len(body), predictor.settings.max_batch_size)
        if not body:
            raise BadRequest("The array is empty; send at least one outcome.")
        posted = load_or_raise(_many, body)
    elif isinstance(body, dict):
        posted = [load_or_raise(_one, body)]
    else:
        raise BadRequest("The body must be one outcome (an object) or a list of them (an array).")
    results = predictor.ledger.add_outcomes(posted)
    for result in results:
        metrics.OUTCOMES.labels(result=RESULT_NAMES[result.status]).inc()
    if isinstance(body, dict):
        (result,) = results
        answer = _item(result)
        if result.status in ERROR_CODES:
            answer.update(error=ERROR_CODES[result.status])
        if result.status == INVALID:
            answer.update(fields={"observed_at": [result.message]})
        return json_response(answer, result.status, RETRY_HEADERS if result.status == UNKNOWN else None)
    conflicts = [r.opportunity_id for r in results if r.status == CONFLICT]
    invalid = [r.opportunity_id for r in results if r.status == INVALID]
    unknown = [r.opportunity_id for r in results if r.status == UNKNOWN]
    answer = {
        "stored": sum(r.status == STORED for r in results),
        "duplicates": sum(r.status == DUPLICATE for r in results),
        "unknown": unknown,
        "conflicts": conflicts,
        "invalid": invalid,
        "results": [_item(r) for r in results],
    }
    if unknown:
        answer.update(retry_after_s=RETRY_UNKNOWN_AFTER_S)
    # Every item was processed; the status names the worst, the items say each one's fate.
    if invalid:
        answer.update(error="validation_error", message=f"{len(invalid)} outcome(s) were observed before their "
                                                        f"prediction was scored ({', '.join(invalid[:5])}); "
                                                        "the others were processed.")
        return json_response(answer, INVALID)
    if conflicts:
        answer.update(error="conflict", message=f"{len(conflicts)} outcome(s) conflict with stored ones "
                                                f"({', '.join(conflicts[:5])}); the others were processed.")
    return json_response(answer, 409 if conflicts else 200)
