"""What omni-mev's worker (omni_mev.workers) and its application tell each other through the WSGI environ.

A leaf: the worker class is loaded by gunicorn's master, which must not
import the application's modules (metrics among them) before it has prepared
their shared directories.
"""
# From the worker: it parks deferred bodies, and writes them with the status they decide (omni_mev.deferred).
PARKS = "omni_mev.parks_deferred"
# From the worker: the request's body, read whole (and checked against AI_MAX_BODY_BYTES) before the application
# runs; `wsgi.input` reads the same bytes.
BODY = "omni_mev.body"
# From the worker: when the request's first byte reached this process (time.time()).
ARRIVED_AT = "omni_mev.arrived_at"
# From the application: the request's body was not well-framed, so nothing after it on the connection can be
# trusted to start a request; the worker closes the connection after the answer.
CLOSE_CONNECTION = "omni_mev.close_connection"
