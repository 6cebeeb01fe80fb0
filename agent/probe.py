"""The agent asking itself whether it serves: used by the image's HEALTHCHECK."""

from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent import tls
from protos.version import AGENT_SERVICE


async def check_health(
    address: str, token: bytes, insecure_loopback: bool, state_dir: Path
) -> tuple[bool, str]:
    """(serving, what was seen); the agent's own certificate is the trust root."""
    if insecure_loopback:
        channel = grpc.aio.insecure_channel(address)
    else:
        identity = tls.load_or_create(state_dir)
        credentials = grpc.ssl_channel_credentials(root_certificates=identity.cert_pem)
        options = [("grpc.ssl_target_name_override", tls.CERT_NAME)]
        channel = grpc.aio.secure_channel(address, credentials, options=options)
    async with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(
                health_pb2.HealthCheckRequest(service=AGENT_SERVICE),
                metadata=(("authorization", "Bearer " + token.decode()),),
                timeout=5,
            )
        except grpc.aio.AioRpcError as exc:
            return False, f"unhealthy: {exc.code().name} {exc.details()}"
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    return serving, "serving" if serving else "not serving"
