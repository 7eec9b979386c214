"""The outcome ledger: every judged opportunity, what happened to it, and the live quality of the confidence."""
