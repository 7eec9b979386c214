// Stream opportunities to omni-mev's stream server from Node (18+, the `ws` package: npm install).
// Pipelined: every message is sent at once; the answers come back in order, each echoing its id.
// Usage: node stream.mjs [WS_URL]
import WebSocket from "ws";

const url = process.argv[2] ?? process.env.OMNI_MEV_STREAM_URL ?? "ws://127.0.0.1:8003/stream";
const headers = process.env.OMNI_MEV_API_KEY ? { Authorization: `Bearer ${process.env.OMNI_MEV_API_KEY}` } : {};

const EXAMPLE = [10.5, 1.012, 3, 0.35, 0.87, 0.5, 2, 1.0];
const BATCH = [EXAMPLE, [2.0, 1.006, 3, 0.3, 0.95, 0.2, 2, 1.0], [0.4, 1.001, 6, 0.9, 0.05, 0.1, 4, 0.2]];

const ws = new WebSocket(url, { headers, perMessageDeflate: false, handshakeTimeout: 2000 });
const answers = [];
const timer = setTimeout(() => fail("no answer within 5 s"), 5000);

function fail(message) {
  console.error(`error: ${message}`);
  process.exit(1);
}

ws.on("unexpected-response", (request, response) => fail(`handshake refused: ${response.statusCode}`));
ws.on("error", (error) => fail(error.message));
ws.on("open", () => {
  ws.send(JSON.stringify({ id: 1, features: EXAMPLE }));
  ws.send(JSON.stringify({ id: 2, items: BATCH.map((features) => ({ features })) }));
});
ws.on("message", (data) => {
  const answer = JSON.parse(data.toString());
  if (answer.error) fail(`${answer.error}: ${answer.message}`);
  answers.push(answer);
  if (answers.length < 2) return;
  const [one, many] = answers;
  console.log(`stream: id=${one.id} decision=${one.decision} confidence=${one.confidence} model=${one.model_type}/${one.model_version}`);
  console.log(`stream batch: id=${many.id} decisions=[${many.results.map((r) => r.decision).join(", ")}]`);
  clearTimeout(timer);
  ws.close(1000);
});
