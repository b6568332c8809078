"""OpenAPI postprocessing: every operation documents the API's error answers (the one error body
of errors.py), so that the schema describes every response a client can get — what the schemathesis
run in the suite checks — and not only the successes drf-spectacular infers."""

from __future__ import annotations

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "fields"],
            "properties": {
                "code": {"type": "string", "description": "Stable, machine-readable."},
                "message": {"type": "string"},
                "fields": {
                    "type": "object",
                    "description": "Each wrong parameter and what is wrong with it.",
                    "additionalProperties": {"type": "array", "items": {"type": "string"}},
                },
            },
        }
    },
}
ANSWERS = {
    "400": "Invalid parameters or body (`fields` names them).",
    "401": "Not signed in: no session, or an unknown, revoked or expired token.",
    "403": "Signed in, but not allowed (a member doing an owner's work, CSRF missing on a session write).",
    "404": "No such object in the caller's accounts.",
    "405": "Method not allowed.",
    "406": "Not acceptable.",
    "415": "Unsupported media type.",
    "429": "Rate limited (`Retry-After`).",
}
WRITE_ANSWERS = {"409": "The change conflicts with the object's state (`code` says how)."}
METHODS = {"get", "post", "put", "patch", "delete"}


def add_error_responses(result, generator, request, public):
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR
    reference = {"$ref": "#/components/schemas/Error"}
    for operations in result.get("paths", {}).values():
        for method, operation in operations.items():
            if method not in METHODS:
                continue
            responses = operation.setdefault("responses", {})
            answers = ANSWERS | (WRITE_ANSWERS if method != "get" else {})
            for status, description in answers.items():
                responses.setdefault(
                    status, {"description": description, "content": {"application/json": {"schema": reference}}}
                )
    return result
