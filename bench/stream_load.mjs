// Closed-loop load on persistent connections, in one Node process: each connection sends one /predict-shaped
// opportunity, waits for its answer, and sends the next, for a fixed time. The same client for both transports,
// so the comparison is of the servers: WebSocket messages to omni-mev stream, or HTTP/1.1 keep-alive /predict.
// gRPC: one Triton ModelStreamInfer stream per connection, the same opportunity as a raw FP32 [1, 8] tensor.
// Usage: node stream_load.mjs ws|http|grpc URL CONNECTIONS SECONDS   (grpc: URL is HOST:PORT)
// Prints one JSON line: messages, duration_s, p50_ms, p90_ms, p99_ms, max_ms, errors.
import { readFileSync } from "node:fs";
import http from "node:http";
import { createRequire } from "node:module";

const require = createRequire(new URL("../examples/node/package.json", import.meta.url));
const WebSocket = require("ws");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

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

function viaGrpcStream() {
  return new Promise((resolve) => {
    const definition = protoLoader.loadFileDescriptorSetFromBuffer(
      readFileSync(new URL("../examples/node/grpc_service.desc", import.meta.url)), { keepCase: true, defaults: true });
    const { inference } = grpc.loadPackageDefinition(definition);
    // A channel of its own per connection (grpc-js would otherwise share one).
    const client = new inference.GRPCInferenceService(url, grpc.credentials.createInsecure(),
                                                      { "grpc.use_local_subchannel_pool": 1 });
    const request = { model_name: "lstm_omni", inputs: [{ name: "features", datatype: "FP32", shape: [1, 8] }],
                      raw_input_contents: [Buffer.from(new Float32Array([10.5, 1.012, 3, 0.35, 0.87, 0.5, 2, 1.0]).buffer)] };
    const call = client.ModelStreamInfer();
    let sentAt = 0;
    const next = () => {
      if (performance.now() >= deadline) { call.end(); return; }
      sentAt = performance.now();
      call.write(request);
    };
    call.on("data", (message) => {
      if (message.error_message) errors += 1;
      latencies.push(performance.now() - sentAt);
      next();
    });
    call.on("end", () => { client.close(); resolve(); });
    call.on("error", () => { errors += 1; client.close(); resolve(); });
    next();
  });
}

const started = performance.now();
const agent = new http.Agent({ keepAlive: true, maxSockets: connections });
const drive = { ws: viaWebSocket, http: () => viaHttp(agent), grpc: viaGrpcStream }[kind];
await Promise.all(Array.from({ length: connections }, drive));
const duration = (performance.now() - started) / 1000;
latencies.sort((a, b) => a - b);
const at = (q) => latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] : null;
console.log(JSON.stringify({ messages: latencies.length, duration_s: duration, p50_ms: at(0.5), p90_ms: at(0.9),
                             p99_ms: at(0.99), max_ms: latencies.length ? latencies[latencies.length - 1] : null,
                             errors }));
agent.destroy();
