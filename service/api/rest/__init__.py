"""REST: the FastAPI app, its middleware, the v2 infer fast path and the routes; each only
translates HTTP to and from the data plane."""
