// Call omni-mev's KServe V2 gRPC service from Node (18+, @grpc/grpc-js: npm install): one ModelInfer, then
// two requests on Triton's ModelStreamInfer stream, answered in order. Tensors travel as raw little-endian bytes.
// Usage: node grpc.mjs [HOST:PORT]
import { readFileSync } from "node:fs";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const target = process.argv[2] ?? process.env.OMNI_MEV_GRPC ?? "127.0.0.1:8004";
const metadata = new grpc.Metadata();
if (process.env.OMNI_MEV_API_KEY) metadata.set("authorization", `Bearer ${process.env.OMNI_MEV_API_KEY}`);

// The service's protocol buffers (python -m omni_mev.stream.kserve > grpc_service.desc).
const definition = protoLoader.loadFileDescriptorSetFromBuffer(
  readFileSync(new URL("grpc_service.desc", import.meta.url)), { keepCase: true, longs: Number, defaults: true });
const { inference } = grpc.loadPackageDefinition(definition);
const client = new inference.GRPCInferenceService(target, grpc.credentials.createInsecure());

const EXAMPLE = [10.5, 1.012, 3, 0.35, 0.87, 0.5, 2, 1.0];
const BATCH = [EXAMPLE, [2.0, 1.006, 3, 0.3, 0.95, 0.2, 2, 1.0], [0.4, 1.001, 6, 0.9, 0.05, 0.1, 4, 0.2]];

function request(id, rows) {
  return {
    model_name: "lstm_omni", id,
    inputs: [{ name: "features", datatype: "FP32", shape: [rows.length, 8] }],
    raw_input_contents: [Buffer.from(new Float32Array(rows.flat()).buffer)],
  };
}

function outputs(response) {
  const raw = Object.fromEntries(response.outputs.map((o, i) => [o.name, response.raw_output_contents[i]]));
  const confidence = new Float32Array(raw.confidence.buffer.slice(raw.confidence.byteOffset,
                                                                  raw.confidence.byteOffset + raw.confidence.length));
  return { confidence: Array.from(confidence), decision: Array.from(raw.decision, (b) => b === 1) };
}

function fail(message) {
  console.error(`error: ${message}`);
  process.exit(1);
}

client.ModelInfer(request("1", [EXAMPLE]), metadata, { deadline: Date.now() + 5000 }, (error, response) => {
  if (error) fail(`${error.code} ${error.details}`);
  const one = outputs(response);
  console.log(`grpc: id=${response.id} decision=${one.decision[0]} confidence=${one.confidence[0].toFixed(6)} ` +
              `model=${response.model_name}/${response.model_version}`);
  const answers = [];
  const call = client.ModelStreamInfer(metadata);
  call.on("data", (message) => {
    if (message.error_message) fail(message.error_message);
    answers.push(message.infer_response);
    if (answers.length === 2) call.end();
  });
  call.on("error", (streamError) => fail(`${streamError.code} ${streamError.details}`));
  call.on("end", () => {
    for (const answer of answers) {
      console.log(`grpc stream: id=${answer.id} decisions=[${outputs(answer).decision.join(", ")}]`);
    }
    client.close();
  });
  call.write(request("2", [EXAMPLE]));
  call.write(request("3", BATCH));
});
