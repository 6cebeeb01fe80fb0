"""The ssh area: provisions a public key and says how to reach the embedded
SSH server, which starts on the first request (no key, no listener)."""

from agent.service.registry import Context
from agent.sshd import SshServer
from protos import agent_pb2 as pb


class SshService:
    def __init__(self, server: SshServer) -> None:
        self._server = server

    async def AuthorizeSshKey(
        self, request: pb.AuthorizeSshKeyRequest, context: Context
    ) -> pb.AuthorizeSshKeyReply:
        self._server.authorize(request.public_key)
        await self._server.start()
        return pb.AuthorizeSshKeyReply(
            port=self._server.port,
            user=self._server.user,
            host_public_key=self._server.host_public_key,
        )
