"""The KServe V2 (Open Inference Protocol) gRPC service, with Triton's ModelStreamInfer, on AI_GRPC_PORT.

The messages and the service are Triton's generated ones, as tritonclient
ships them (`tritonclient.grpc.service_pb2`, `service_pb2_grpc`): the stock
`tritonclient.grpc` works unchanged, unary and streaming. Inference runs the
V2 REST routes' own rules on the decoded tensors (omni_mev.core.v2
`run_inference`), so both transports answer alike.

- Inputs as raw contents (`raw_input_contents`, what tritonclient sends) or
  typed contents (`fp32_contents`, `bytes_contents`); outputs always as raw
  contents (`raw_output_contents`).
- A request the protocol refuses answers INVALID_ARGUMENT (NOT_FOUND for an
  unknown model or version, UNAVAILABLE without a model), never a crash. On
  ModelStreamInfer the error is that response's `error_message`, and the
  stream stays open.
- With API keys configured every call needs one in its metadata
  (`authorization: Bearer <key>` or `x-api-key`): UNAUTHENTICATED otherwise.
  The standard health service (grpc.health.v1) is open, for probes.
- Nothing is dispatched from this protocol, as on V2 REST.
- On shutdown (drain) the health service answers NOT_SERVING, no new call
  is taken, each stream answers the message in hand and then ends with
  UNAVAILABLE ("shutting down; reconnect"), which clients retry, and unary
  calls in flight finish; all within the drain's grace.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from omni_mev.core import accounting, v2, v2_binary
from omni_mev.core.keys import ApiKeys
from omni_mev.errors import OmniMevError
from omni_mev.predictor import Predictor
from omni_mev.runtime.base import MODEL_NAME
from omni_mev.stream.reload import Serving

log = logging.getLogger(__name__)
SERVICE = "inference.GRPCInferenceService"
ENDPOINT = "grpc:ModelInfer"
STREAM_ENDPOINT = "grpc:ModelStreamInfer"
SHUTTING_DOWN = "the server is shutting down; reconnect"
_STATUS_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
                 404: grpc.StatusCode.NOT_FOUND, 413: grpc.StatusCode.INVALID_ARGUMENT,
                 422: grpc.StatusCode.INVALID_ARGUMENT, 503: grpc.StatusCode.UNAVAILABLE}


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """GRPCInferenceService on this process's predictor."""

    def __init__(self, serving: Serving, api_keys: ApiKeys) -> None:
        self.serving = serving
        self.api_keys = api_keys
        self.draining = asyncio.Event()

    @property
    def predictor(self) -> Predictor:
        """The predictor serving now (a promotion swaps it between two requests)."""
        return self.serving.predictor

    async def _authorised(self, context: grpc.aio.ServicerContext) -> None:
        metadata = dict(context.invocation_metadata() or ())
        try:
            self.api_keys.check(metadata.get("authorization"), metadata.get("x-api-key"))
        except OmniMevError as refused:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, refused.message)

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802 - the protocol's names
        await self._authorised(context)
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        await self._authorised(context)
        return pb.ServerReadyResponse(ready=self.predictor.status().ready)

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        await self._authorised(context)
        status = self.predictor.status()
        ready = (status.ready and request.name == MODEL_NAME
                 and request.version in ("", status.version))
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        await self._authorised(context)
        return pb.ServerMetadataResponse(**v2.server_metadata())

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        await self._authorised(context)
        try:
            metadata = v2.metadata_of(self.predictor, request.name, request.version or None)
        except OmniMevError as error:
            await context.abort(_STATUS_CODES.get(error.status, grpc.StatusCode.INTERNAL), error.message)
        tensors = {kind: [pb.ModelMetadataResponse.TensorMetadata(**tensor) for tensor in metadata[kind]]
                   for kind in ("inputs", "outputs")}
        return pb.ModelMetadataResponse(name=metadata["name"], versions=metadata["versions"],
                                        platform=metadata["platform"], **tensors)

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        await self._authorised(context)
        try:
            return self._infer(request, ENDPOINT)
        except OmniMevError as error:
            await context.abort(_STATUS_CODES.get(error.status, grpc.StatusCode.INTERNAL), error.message)

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[Any],  # noqa: N802
                               context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await self._authorised(context)
        async for request in self._until_drained(request_iterator, context):
            try:
                yield pb.ModelStreamInferResponse(infer_response=self._infer(request, STREAM_ENDPOINT))
            except OmniMevError as error:
                yield pb.ModelStreamInferResponse(error_message=error.message)
            except Exception:
                log.exception("unhandled error in ModelStreamInfer")
                yield pb.ModelStreamInferResponse(error_message="The service failed to answer; it is logged.")

    async def _until_drained(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
                             ) -> AsyncIterator[Any]:
        """The stream's messages, until the client ends it or a drain starts; a drain ends the stream, between
        two messages, with UNAVAILABLE."""
        drained = asyncio.ensure_future(self.draining.wait())
        try:
            while True:
                following = asyncio.ensure_future(anext(requests))
                await asyncio.wait((following, drained), return_when=asyncio.FIRST_COMPLETED)
                if not following.done():
                    following.cancel()
                    context.set_code(grpc.StatusCode.UNAVAILABLE)
                    context.set_details(SHUTTING_DOWN)
                    return
                try:
                    yield following.result()
                except StopAsyncIteration:
                    return
        finally:
            drained.cancel()

    def _infer(self, request: Any, endpoint: str) -> Any:
        """One ModelInferRequest through the V2 rules; its ModelInferResponse with raw output contents."""
        started, status = time.perf_counter(), 200
        try:
            result = v2.run_inference(self.predictor, request.model_name, request.model_version or None,
                                      _payload(request))
        except OmniMevError as error:
            status = error.status
            raise
        finally:
            accounting.count(endpoint, status, started)
        outputs, raw = [], []
        for name in result.outputs:
            datatype = v2.OUTPUT_DATATYPES[name]
            outputs.append(pb.ModelInferResponse.InferOutputTensor(name=name, datatype=datatype,
                                                                   shape=[result.batch, 1]))
            raw.append(v2_binary.encode(datatype, result.values[name]))
        response = pb.ModelInferResponse(model_name=MODEL_NAME, model_version=result.model_version,
                                         id=request.id or result.id, outputs=outputs, raw_output_contents=raw)
        for key, value in result.parameters.items():
            if isinstance(value, str):
                response.parameters[key].string_param = value
            elif isinstance(value, (int, float)):
                response.parameters[key].double_param = float(value)
        return response


def _payload(request: Any) -> dict[str, Any]:
    """A ModelInferRequest as the V2 REST payload, its tensors decoded."""
    if request.raw_input_contents and len(request.raw_input_contents) != len(request.inputs):
        raise v2.V2Error(f"The request has {len(request.raw_input_contents)} raw input contents for "
                         f"{len(request.inputs)} inputs.")
    inputs = []
    for index, tensor in enumerate(request.inputs):
        decoded: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if request.raw_input_contents:
            decoded["data"] = v2_binary.decode(decoded, request.raw_input_contents[index])
        elif tensor.contents.fp32_contents:
            decoded["data"] = list(tensor.contents.fp32_contents)
        elif tensor.contents.bytes_contents:
            decoded["data"] = list(tensor.contents.bytes_contents)
        inputs.append(decoded)
    if not inputs:
        raise v2.V2Error(f"The request has no inputs; the model takes '{v2.INPUT_NAME}'.")
    return {"id": request.id, "inputs": inputs, "outputs": [{"name": output.name} for output in request.outputs]}


def descriptor_set() -> bytes:
    """The service's protocol buffers as a FileDescriptorSet, for clients that load them at run time (the Node
    example, examples/node/grpc_service.desc; `python -m omni_mev.stream.kserve > FILE` writes it)."""
    from google.protobuf import descriptor_pb2
    from tritonclient.grpc import model_config_pb2

    files = descriptor_pb2.FileDescriptorSet()
    for module in (model_config_pb2, pb):
        module.DESCRIPTOR.CopyToProto(files.file.add())
    return files.SerializeToString(deterministic=True)


class GrpcServer:
    """The gRPC server: the inference service and the standard health service, until drain()."""

    def __init__(self, serving: Serving, api_keys: ApiKeys) -> None:
        self.server = grpc.aio.server()
        self.service = InferenceService(serving, api_keys)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(self.service, self.server)
        self.checks = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.checks, self.server)
        self.ready = serving.predictor.status().ready

    async def _set_health(self, status: Any) -> None:
        for service in ("", SERVICE):
            await self.checks.set(service, status)

    async def start(self, host: str, port: int) -> GrpcServer:
        serving_status = health_pb2.HealthCheckResponse.SERVING if self.ready else \
            health_pb2.HealthCheckResponse.NOT_SERVING
        await self._set_health(serving_status)
        self.server.add_insecure_port(f"{host}:{port}")
        await self.server.start()
        return self

    async def drain(self, grace_s: float) -> None:
        """Probes see NOT_SERVING; no new call is taken; streams end between two messages (UNAVAILABLE) and unary
        calls in flight finish, within `grace_s`."""
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.service.draining.set()
        await self.server.stop(grace_s)


async def start(serving: Serving, api_keys: ApiKeys, host: str, port: int) -> GrpcServer:
    """The gRPC server, listening."""
    return await GrpcServer(serving, api_keys).start(host, port)


if __name__ == "__main__":
    import sys

    sys.stdout.buffer.write(descriptor_set())
