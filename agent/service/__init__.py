"""gRPC servicers: translate protobuf to domain calls, one area per module."""
