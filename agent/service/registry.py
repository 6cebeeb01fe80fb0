"""Builds the gRPC handler table for tether.v1.Agent from its descriptor.

Each area of the service (shell, tmux, status, ...) is a plain object whose
methods are named after the RPCs. The table is made from the service
descriptor, so a method added to the proto is served (UNIMPLEMENTED until an
area implements it) without editing this file. Shell and Forward use identity
serializers (see protos/codec.py). Domain errors become status codes here, in
one table, and nowhere else.
"""

import inspect
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeAlias

import grpc
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from agent import errors
from protos import agent_pb2 as pb
from protos.codec import RAW_METHODS
from protos.version import AGENT_SERVICE

log = logging.getLogger(__name__)

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

STATUS_FOR_ERROR: dict[type[errors.AgentError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def status_for(exc: errors.AgentError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS_FOR_ERROR:
            return STATUS_FOR_ERROR[cls]
    return grpc.StatusCode.INTERNAL


async def _abort(context: Context, exc: errors.AgentError) -> None:
    await context.abort(status_for(exc), str(exc))


def _unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def handle(request: Any, context: Context) -> Any:
        try:
            return await behavior(request, context)
        except errors.AgentError as exc:
            await _abort(context, exc)

    return handle


def _streaming(behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., Any]:
    async def handle(request: Any, context: Context) -> AsyncIterator[Any]:
        try:
            async for reply in behavior(request, context):
                yield reply
        except errors.AgentError as exc:
            await _abort(context, exc)

    return handle


def _message_class(descriptor: Any) -> type[Message]:
    return GetMessageClass(descriptor)


def _handler(method: MethodDescriptor, behavior: Callable[..., Any]) -> Any:
    raw = method.name in RAW_METHODS
    deserialize = None if raw else _message_class(method.input_type).FromString
    serialize = None if raw else _message_class(method.output_type).SerializeToString
    # A streaming method is either an async generator of replies, or a
    # coroutine that writes with context.write (Shell and Forward).
    wrapped = _streaming(behavior) if inspect.isasyncgenfunction(behavior) else _unary(behavior)
    if method.server_streaming:
        factory = (
            grpc.stream_stream_rpc_method_handler
            if method.client_streaming
            else grpc.unary_stream_rpc_method_handler
        )
    else:
        factory = (
            grpc.stream_unary_rpc_method_handler
            if method.client_streaming
            else grpc.unary_unary_rpc_method_handler
        )
    return factory(wrapped, request_deserializer=deserialize, response_serializer=serialize)


async def _unimplemented(request: Any, context: Context) -> None:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this agent does not serve that method")


def build_handler(areas: Sequence[object]) -> "grpc.GenericRpcHandler[Any, Any]":
    """The generic handler serving every method of the Agent service."""
    service = pb.DESCRIPTOR.services_by_name[AGENT_SERVICE.rsplit(".", 1)[1]]
    table: dict[str, Any] = {}
    for method in service.methods:
        behavior = next(
            (getattr(area, method.name) for area in areas if hasattr(area, method.name)),
            _unimplemented,
        )
        table[method.name] = _handler(method, behavior)
    return grpc.method_handlers_generic_handler(AGENT_SERVICE, table)


def method_names() -> list[str]:
    """Every method of the service, from the descriptor (tests enumerate these)."""
    service = pb.DESCRIPTOR.services_by_name[AGENT_SERVICE.rsplit(".", 1)[1]]
    return [method.name for method in service.methods]
