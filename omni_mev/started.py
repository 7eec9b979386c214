"""When the service started: the moment this module is first imported in its process tree.

gunicorn.conf.py imports it in the master, so every worker, forked from the
master at start and again on each reload, inherits the master's start; a
process without a master (`flask run`, the tests) starts when it first
imports it.
"""
from __future__ import annotations

import time

STARTED_AT: float = time.time()
