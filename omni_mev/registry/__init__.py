"""The model registry: versions, champion and challenger, the promotion gate, and retraining."""
