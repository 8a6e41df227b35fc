"""OpenAPI documentation: the error responses, and request bodies that take no other fields.

Every error is OpenAI's shape (``ErrorResponse``).

Litestar documents a 400 of its own ``{status_code, detail, extra}`` shape by default, which is not
what this server sends (service/api/errors.py renders every error as ``{"error": {...}}``); each route
lists the statuses it can answer with through ``responses=errors(...)``, which replaces that.
"""

from __future__ import annotations

from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin
from litestar.openapi.datastructures import ResponseSpec

from service.api.schemas import ErrorResponse

_DESCRIPTIONS = {
    400: "Invalid request: malformed JSON, a wrong type, a value out of range, a limit exceeded",
    401: "Missing or invalid API key",
    403: "A valid key that may not do this (admin routes)",
    404: "No such model, collection or document",
    409: "A collection with that name already exists",
    413: "Request body larger than EMBEDSEARCH_MAX_BODY_BYTES",
    429: "Too many requests",
    500: "Internal error (a generic message; details are only in the server log)",
    503: "Temporarily unavailable (queue full, model loading, database unreachable); see Retry-After",
}
# Every authenticated route can answer these.
COMMON = (400, 401, 429, 500, 503)


def errors(*statuses: int) -> dict[int, ResponseSpec]:
    """Response docs for the common error statuses plus ``statuses``, all in the OpenAI error shape."""
    return {
        status: ResponseSpec(data_container=ErrorResponse, description=_DESCRIPTIONS[status], generate_examples=False)
        for status in sorted({*COMMON, *statuses})
    }


class StrictBodies(StructSchemaPlugin):
    """Request bodies refuse unknown fields (``forbid_unknown_fields``): their schemas say so with
    ``additionalProperties: false``, which Litestar's own struct schemas leave out."""

    def is_plugin_supported_field(self, field_definition) -> bool:  # noqa: ANN001 - Litestar's signature
        return (super().is_plugin_supported_field(field_definition)
                and field_definition.type_.__struct_config__.forbid_unknown_fields)

    def to_openapi_schema(self, field_definition, schema_creator):  # noqa: ANN001
        schema = super().to_openapi_schema(field_definition, schema_creator)
        schema.additional_properties = False
        return schema
