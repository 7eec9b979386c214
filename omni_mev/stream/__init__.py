"""The stream server (`omni-mev stream`): persistent connections beside the prefork HTTP service.

A process of its own, with its own model session and the HTTP service's
predictor, ledger, dispatch outbox and settings (omni_mev.service). Each
message is scored by the same schema rules and encoders as the HTTP routes
(omni_mev.stream.scoring), so an answer is the one /predict or /predict/batch
gives. The WebSocket protocol (omni_mev.stream.websocket) owns the framing,
the per-connection bounds and the close codes.
"""
