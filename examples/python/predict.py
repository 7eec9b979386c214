"""Call omni-mev from Python: one prediction, then a batch. Usage: python predict.py [BASE_URL]"""
import os
import sys

from omni_mev.client import Client, OmniMevError

EXAMPLE = [10.5, 1.012, 3, 0.35, 0.87, 0.5, 2, 1.0]
BATCH = [EXAMPLE, [2.0, 1.006, 3, 0.3, 0.95, 0.2, 2, 1.0], [0.4, 1.001, 6, 0.9, 0.05, 0.1, 4, 0.2]]


def main() -> int:
    base_url = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("OMNI_MEV_URL", "http://127.0.0.1:8001")
    with Client(base_url, api_key=os.environ.get("OMNI_MEV_API_KEY"), timeout=2.0) as client:
        try:
            one = client.predict(EXAMPLE)
            many = client.predict_batch(BATCH)
        except OmniMevError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    print(f"predict: decision={str(one.decision).lower()} confidence={one.confidence} "
          f"model={one.model_type}/{one.model_version}")
    print("batch: decisions=[" + ", ".join(str(d).lower() for d in many.decisions) + "]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
