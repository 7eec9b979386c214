"""POST /outcomes: what happened to the opportunities the service judged, into the ledger.

The ledger commits outcomes on its own thread (the commit waits for the disk);
the answer waits for it without holding the worker, as a dispatch's does
(omni_mev.deferred), and its status is decided when it is rendered.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from typing import Any

import orjson

from omni_mev import metrics
from omni_mev.api import predictor_of
from omni_mev.core.scoring import check_batch_size
from omni_mev.api.direct import DirectRequest
from omni_mev.core.answers import Answer, Later
from omni_mev.errors import INTERNAL_ERROR, BadRequest, OmniMevError
from omni_mev.ledger.store import (CONFLICT, DUPLICATE, INVALID, RETRY_UNKNOWN_AFTER_S, STORED, UNKNOWN,
                                   LedgerUnavailable, Outcome, OutcomeResult)
from omni_mev.core.schemas import OutcomeSchema, load_or_raise

log = logging.getLogger(__name__)
_one = OutcomeSchema()
_many = OutcomeSchema(many=True)
# The ledger's results in HTTP terms.
HTTP_STATUS = {STORED: 201, DUPLICATE: 200, UNKNOWN: 404, CONFLICT: 409, INVALID: 422}
ERROR_CODES = {UNKNOWN: "unknown_opportunity", CONFLICT: "conflict", INVALID: "validation_error"}
# An unknown id is answered at once; its prediction may be a moment from the database (docs/api.md).
RETRY_HEADERS = {"Retry-After": str(RETRY_UNKNOWN_AFTER_S)}
# The most an answer waits for the ledger's commit; then 503 (whether it was stored is unknown: outcomes are
# idempotent, so the caller sends it again).
COMMIT_WAIT_S = 10.0


def _body(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise BadRequest(f"The body is not valid JSON: {error}.") from None


def _item(result: OutcomeResult) -> dict[str, Any]:
    return {"opportunity_id": result.opportunity_id, "result": result.status.value,
            "status": HTTP_STATUS[result.status], "message": result.message}


def _one_answer(result: OutcomeResult) -> Answer:
    answer = _item(result)
    if result.status in ERROR_CODES:
        answer.update(error=ERROR_CODES[result.status])
    if result.field is not None:
        answer.update(fields={result.field: [result.message]})
    return Answer(HTTP_STATUS[result.status], answer, RETRY_HEADERS if result.status == UNKNOWN else None)


def _many_answer(results: list[OutcomeResult]) -> Answer:
    conflicts = [r.opportunity_id for r in results if r.status == CONFLICT]
    invalid = [r.opportunity_id for r in results if r.status == INVALID]
    unknown = [r.opportunity_id for r in results if r.status == UNKNOWN]
    answer: dict[str, Any] = {
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
        answer.update(error="validation_error", message=f"{len(invalid)} outcome(s) were not stored "
                                                        f"({', '.join(invalid[:5])}; each item says why); "
                                                        "the others were processed.")
        return Answer(HTTP_STATUS[INVALID], answer)
    if conflicts:
        answer.update(error="conflict", message=f"{len(conflicts)} outcome(s) conflict with stored ones "
                                                f"({', '.join(conflicts[:5])}); the others were processed.")
        return Answer(HTTP_STATUS[CONFLICT], answer)
    return Answer(200, answer)


def _answer(stored: Future, one: bool) -> Answer:
    """The answer once the ledger is done with the post, or 503 if it could not be (in time)."""
    if not stored.done():
        error: OmniMevError = LedgerUnavailable(f"The ledger did not commit within {COMMIT_WAIT_S:g} s; whether "
                                                "the outcomes were stored is unknown: send them again (the same "
                                                "outcome twice is one outcome).")
    else:
        try:
            results = stored.result()
        except OmniMevError as failure:
            error = failure
        except Exception:
            log.exception("unhandled error storing outcomes")
            return Answer(500, INTERNAL_ERROR)
        else:
            for result in results:
                metrics.OUTCOMES.labels(result=result.status.value).inc()
            return _one_answer(results[0]) if one else _many_answer(results)
    return Answer(error.status, error.to_dict(), error.headers)


def post_outcomes(request: DirectRequest) -> Later:
    """One outcome (an object) or up to AI_MAX_BATCH_SIZE (an array); idempotent per opportunity_id."""
    body = _body(request.body)
    predictor = predictor_of(request.app)
    if isinstance(body, list):
        check_batch_size(len(body), predictor.settings.max_batch_size)
        if not body:
            raise BadRequest("The array is empty; send at least one outcome.")
        posted: list[Outcome] = load_or_raise(_many, body)  # type: ignore[assignment]  # the schema's post_load
    elif isinstance(body, dict):
        posted = [load_or_raise(_one, body)]  # type: ignore[list-item]
    else:
        raise BadRequest("The body must be one outcome (an object) or a list of them (an array).")
    stored = predictor.ledger.submit_outcomes(posted)
    return Later([stored], time.monotonic() + COMMIT_WAIT_S, lambda: _answer(stored, isinstance(body, dict)))
