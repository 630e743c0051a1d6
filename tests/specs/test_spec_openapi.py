"""The OpenAPI document names its server and every operation (for client generators)."""

from __future__ import annotations

from pulse_transports.web import openapi

METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


class TestOpenApiForClients:
    """servers and operationIds, which redocly's recommended rules and codegen need."""

    def test_servers_is_not_empty(self) -> None:
        """A relative server URL: the hub that serves the document."""
        assert openapi()["servers"] == [
            {"url": "/", "description": "the hub serving this document (pulse serve --http)"}
        ]

    def test_every_operation_has_a_unique_operation_id(self) -> None:
        """Each of the operations has an operationId, none repeated."""
        ids = [
            operation.get("operationId")
            for item in openapi()["paths"].values()
            for method, operation in item.items()
            if method in METHODS
        ]
        assert len(ids) >= 6
        assert None not in ids
        assert len(set(ids)) == len(ids)
