"""The data plane: the protocol-neutral answers (MLServer's ``DataPlane``), between the engine
and the REST and gRPC adapters; no web framework, no gRPC."""
