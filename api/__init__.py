"""REST + WebSocket API of the gateway (quart-trio on hypercorn): ``create_app`` and ``serve``."""
