"""The k1s0 event-store sidecar: REST (aiohttp) and gRPC (grpc.aio) over ``k1s0_event_store``."""
