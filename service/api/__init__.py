"""The HTTP layer: the only place FastAPI and request schemas appear."""
