"""What every transport shares, below the HTTP API (omni_mev.api) and the stream server (omni_mev.stream).

Decoding an opportunity or a batch (schemas), scoring and encoding its answer
(scoring), the answers a handler gives and the wait for a dispatch's outcome
(answers), the Open Inference Protocol's rules and tensors (v2, v2_binary),
API keys (keys), the health body (health) and request accounting
(accounting). Nothing here imports a web framework, a server or a transport:
the `.importlinter` contracts say so, and tests/test_architecture.py shows
that the stream server loads none of them.
"""
