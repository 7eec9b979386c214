"""The OpenAPI document against the running service: schemathesis, every check, through the real gunicorn."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from omni_mev.features import FEATURE_BOUNDS, FEATURE_NAMES
from tests.servers import ROOT, Gunicorn

KEY = "fuzz-key-0123456789abcdef"
# Fixed so that CI is repeatable; set OMNI_MEV_FUZZ_SEED to explore others.
SEED = int(os.environ.get("OMNI_MEV_FUZZ_SEED", "20261127"))
EXAMPLES = int(os.environ.get("OMNI_MEV_FUZZ_EXAMPLES", "40"))
SCHEMATHESIS = Path(sys.executable).with_name("st")


def test_feature_list_has_per_position_bounds(client):
    document = client.get("/openapi.json").get_json()
    assert document["openapi"] == "3.1.0"
    as_list = document["components"]["schemas"]["FeatureVector"]["oneOf"][0]
    assert [p["description"].split(":")[0] for p in as_list["prefixItems"]] == list(FEATURE_NAMES)
    for position, name in zip(as_list["prefixItems"], FEATURE_NAMES):
        assert (position["minimum"], position["maximum"]) == (FEATURE_BOUNDS[name].minimum, FEATURE_BOUNDS[name].upper)
    assert document["paths"]["/health"]["get"]["responses"].keys() == {"200", "503"}
    assert "requestBody" in document["paths"]["/v2/models/lstm_omni/infer"]["post"]


def test_security_is_declared_only_when_keys_are_configured(make_app):
    import json

    open_document = make_app().test_client().get("/openapi.json").get_json()
    text = json.dumps(open_document)
    assert "security" not in open_document and "securitySchemes" not in open_document["components"]
    assert '"security"' not in text and '"401"' not in text and "no operation needs credentials" in text
    keyed = make_app(AI_API_KEYS=KEY).test_client().get("/openapi.json", headers={"X-API-Key": KEY}).get_json()
    assert keyed["security"] == [{"bearer": []}, {"apiKey": []}]
    assert set(keyed["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    assert keyed["paths"]["/health"]["get"]["security"] == []  # the health checks stay open
    assert "401" in keyed["paths"]["/predict"]["post"]["responses"]


def test_fuzz_finds_nothing(tmp_path, capsys):
    with Gunicorn({"AI_API_KEYS": KEY}, workers=2) as server:
        result = subprocess.run(
            [str(SCHEMATHESIS), "--config-file", str(ROOT / "tests" / "schemathesis.toml"), "--no-color", "run",
             f"{server.url}/openapi.json", "--header", f"Authorization: Bearer {KEY}", "--checks", "all",
             "--max-examples", str(EXAMPLES), "--seed", str(SEED), "--workers", "1",
             "--report", "junit", "--report-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=600, cwd=tmp_path)
        server_log = server.output()
    generated = re.search(r"(\d+) generated", result.stdout)
    with capsys.disabled():
        print(f"\nschemathesis: seed {SEED}, at most {EXAMPLES} examples per operation, "
              f"{generated.group(1) if generated else '?'} test cases, exit code {result.returncode}")
    assert result.returncode == 0, result.stdout[-8000:]
    assert "Traceback" not in server_log
