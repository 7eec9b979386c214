// Call omni-mev from Node (18+, built-in fetch): one prediction, then a batch.
// Usage: node predict.mjs [BASE_URL]
const baseUrl = process.argv[2] ?? process.env.OMNI_MEV_URL ?? "http://127.0.0.1:8001";
const headers = { "Content-Type": "application/json" };
if (process.env.OMNI_MEV_API_KEY) headers.Authorization = `Bearer ${process.env.OMNI_MEV_API_KEY}`;

const EXAMPLE = [10.5, 1.012, 3, 0.35, 0.87, 0.5, 2, 1.0];
const BATCH = [EXAMPLE, [2.0, 1.006, 3, 0.3, 0.95, 0.2, 2, 1.0], [0.4, 1.001, 6, 0.9, 0.05, 0.1, 4, 0.2]];

async function post(path, body) {
  const response = await fetch(baseUrl + path, {
    method: "POST", headers, body: JSON.stringify(body), signal: AbortSignal.timeout(2000),
  });
  const payload = await response.json();
  if (!response.ok) throw new Error(`${response.status} ${payload.error}: ${payload.message ?? ""}`);
  return payload;
}

try {
  const one = await post("/predict", { features: EXAMPLE });
  console.log(`predict: decision=${one.decision} confidence=${one.confidence} model=${one.model_type}/${one.model_version}`);
  const many = await post("/predict/batch", { items: BATCH.map((features) => ({ features })) });
  console.log(`batch: decisions=[${many.results.map((r) => r.decision).join(", ")}]`);
} catch (error) {
  console.error(`error: ${error.message}`);
  process.exit(1);
}
