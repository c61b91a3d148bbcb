"""The HTTP API on a unix socket (`pyvmm run --api-socket PATH`) and its
client (`pyvmm remote`), both driven by the OpenAPI document openapi.json.
Uses only Machine's public API."""

from .document import document
from .server import ApiServer, ApiSocketError

__all__ = ["ApiServer", "ApiSocketError", "document"]
