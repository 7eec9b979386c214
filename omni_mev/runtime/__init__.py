"""Model runtimes (ONNX Runtime, PyTorch), the fallback chain over them, and loading a worker's models.

Nothing here knows HTTP: the predictor calls the runtimes, the API calls the predictor.
"""
