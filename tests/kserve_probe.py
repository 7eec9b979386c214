"""KServe's SDK clients against a running service, in an interpreter of their own: kserve's generated protocol
buffers and tritonclient's (tests/test_grpc.py) declare the same `inference.*` messages, which one process's
descriptor pool cannot hold twice.

    python -m tests.kserve_probe REST_URL GRPC_TARGET SEED...

prints, as JSON, the clients' health answers and, per seed, the confidences and decisions of each inference:
REST in JSON, REST with binary tensors, gRPC."""
from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import numpy as np

from omni_mev.training.export import random_raw_features

MODEL = "lstm_omni"
ROWS = 5


def windows(seed: int) -> np.ndarray:
    return random_raw_features(np.random.default_rng(seed), ROWS, 1).astype(np.float32)


def request(rows: np.ndarray, binary: bool) -> Any:
    from kserve import InferInput, InferRequest

    features = InferInput("features", list(rows.shape), "FP32")
    features.set_data_from_numpy(rows, binary_data=binary)
    return InferRequest(MODEL, [features], request_id="k1")


def summary(answer: Any) -> dict[str, Any]:
    return {"id": answer.id, "model_name": answer.model_name,
            "confidence": answer.get_output_by_name("confidence").as_numpy().reshape(-1).tolist(),
            "decision": answer.get_output_by_name("decision").as_numpy().reshape(-1).tolist()}


async def probe(rest_url: str, grpc_target: str, seeds: list[int]) -> dict[str, Any]:
    # Imported here: the tests import this module's rows without loading kserve's protocol buffers.
    from kserve import InferenceGRPCClient, InferenceRESTClient, RESTConfig

    rest = InferenceRESTClient(RESTConfig(protocol="v2", timeout=10, retries=0))
    grpc = InferenceGRPCClient(grpc_target, timeout=10, retries=0)
    try:
        return {
            "rest_health": [await rest.is_server_live(rest_url), await rest.is_server_ready(rest_url),
                            await rest.is_model_ready(rest_url, MODEL), await rest.is_model_ready(rest_url, "other")],
            "grpc_health": [await grpc.is_server_live(), await grpc.is_server_ready(),
                            await grpc.is_model_ready(MODEL), await grpc.is_model_ready("other")],
            "rest_json": summary(await rest.infer(rest_url, request(windows(seeds[0]), False), model_name=MODEL)),
            "rest_binary": summary(await rest.infer(rest_url, request(windows(seeds[1]), True), model_name=MODEL)),
            "grpc": summary(await grpc.infer(request(windows(seeds[2]), True))),
        }
    finally:
        await rest.close()
        await grpc.close()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(probe(sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[3:6]]))))
