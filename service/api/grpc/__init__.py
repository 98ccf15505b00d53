"""The Open Inference Protocol over gRPC: the servicer, its method table and its codec; each only
translates protobuf messages to and from the data plane."""
