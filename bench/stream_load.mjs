// Closed-loop load on persistent connections, in one Node process: each connection sends one /predict-shaped
// opportunity, waits for its answer, and sends the next, for a fixed time. The same client for both transports,
// so the comparison is of the servers: WebSocket messages to omni-mev stream, or HTTP/1.1 keep-alive /predict.
// Usage: node stream_load.mjs ws|http URL CONNECTIONS SECONDS
// Prints one JSON line: messages, duration_s, p50_ms, p90_ms, p99_ms, max_ms, errors.
import http from "node:http";
import { createRequire } from "node:module";

const require = createRequire(new URL("../examples/node/package.json", import.meta.url));
const WebSocket = require("ws");

const [kind, url, connectionsArg, secondsArg] = process.argv.slice(2);
const connections = Number(connectionsArg);
const deadline = performance.now() + Number(secondsArg) * 1000;
const body = JSON.stringify({ features: [10.5, 1.012, 3, 0.35, 0.87, 0.5, 2, 1.0] });
const latencies = [];
let errors = 0;

function viaWebSocket() {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, { perMessageDeflate: false });
    let sentAt = 0;
    const next = () => {
      if (performance.now() >= deadline) { ws.close(1000); return; }
      sentAt = performance.now();
      ws.send(body);
    };
    ws.on("open", next);
    ws.on("message", (data) => {
      if (data.toString().includes('"error"')) errors += 1;
      latencies.push(performance.now() - sentAt);
      next();
    });
    ws.on("close", resolve);
    ws.on("error", () => { errors += 1; resolve(); });
  });
}

function viaHttp(agent) {
  return new Promise((resolve) => {
    const target = new URL(url);
    const next = () => {
      if (performance.now() >= deadline) { resolve(); return; }
      const sentAt = performance.now();
      const request = http.request({ hostname: target.hostname, port: target.port, path: target.pathname,
                                     method: "POST", agent,
                                     headers: { "Content-Type": "application/json",
                                                "Content-Length": Buffer.byteLength(body) } }, (response) => {
        response.resume();
        response.on("end", () => {
          if (response.statusCode !== 200) errors += 1;
          latencies.push(performance.now() - sentAt);
          next();
        });
      });
      request.on("error", () => { errors += 1; resolve(); });
      request.end(body);
    };
    next();
  });
}

const started = performance.now();
const agent = new http.Agent({ keepAlive: true, maxSockets: connections });
await Promise.all(Array.from({ length: connections }, () => (kind === "ws" ? viaWebSocket() : viaHttp(agent))));
const duration = (performance.now() - started) / 1000;
latencies.sort((a, b) => a - b);
const at = (q) => latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] : null;
console.log(JSON.stringify({ messages: latencies.length, duration_s: duration, p50_ms: at(0.5), p90_ms: at(0.9),
                             p99_ms: at(0.99), max_ms: latencies.length ? latencies[latencies.length - 1] : null,
                             errors }));
agent.destroy();
