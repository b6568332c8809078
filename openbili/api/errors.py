"""The one error body of the dashboard API: `{"error": {"code", "message", "fields"}}`.

`code` is stable and machine-readable, `message` is for people, `fields` maps each request
parameter (a body field, a query parameter) that is wrong to what is wrong with it — empty when the
error is not about one. Every DRF exception and Django's 404 go through `exception_handler`, so no
view builds an error itself; unknown URLs under /api/ get the same body (`not_found`).
"""

from __future__ import annotations

from django.http import Http404, HttpResponse, JsonResponse
from django.views import csrf as csrf_views
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from openbili.core.errors import OpenbiliError

CODES = {
    exceptions.ParseError: "invalid_json",
    exceptions.ValidationError: "invalid_request",
    exceptions.AuthenticationFailed: "not_authenticated",
    exceptions.NotAuthenticated: "not_authenticated",
    exceptions.PermissionDenied: "permission_denied",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.Throttled: "rate_limited",
}


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The request conflicts with the object's current state."
    default_code = "conflict"


def _flatten(detail) -> list[str]:
    if isinstance(detail, dict):
        return [message for value in detail.values() for message in _flatten(value)]
    if isinstance(detail, list):
        return [message for value in detail for message in _flatten(value)]
    return [str(detail)]


def _fields(detail) -> dict[str, list[str]]:
    """{param: [messages]} of a validation error; nested fields as `a.b` / `a[0]`."""
    if not isinstance(detail, dict):
        return {}
    out: dict[str, list[str]] = {}
    for name, value in detail.items():
        if name == "non_field_errors":
            continue
        if isinstance(value, dict):
            out |= {f"{name}.{key}": messages for key, messages in _fields(value).items()}
        else:
            out[str(name)] = _flatten(value)
    return out


def body(code: str, message: str, fields: dict | None = None) -> dict:
    return {"error": {"code": code, "message": message, "fields": fields or {}}}


def exception_handler(exc, context):
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # a bug: Django's 500 (logged), never a traceback in the body
    code = next((code for kind, code in CODES.items() if isinstance(exc, kind)), None)
    code = code or getattr(exc, "default_code", "error")
    detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
    fields = _fields(detail) if isinstance(exc, exceptions.ValidationError) else {}
    if fields:
        message = "Invalid parameters: " + ", ".join(sorted(fields)) + "."
    else:
        messages = _flatten(detail)
        message = " ".join(messages) if messages else "Error."
    response.data = body(code, message, fields)
    return response


@csrf_exempt  # it changes nothing; a CSRF refusal would hide the 404 (and in HTML)
def not_found(request, exception=None) -> JsonResponse:
    """An unknown URL under /api/, in the API's error body."""
    return JsonResponse(body("not_found", "Unknown URL."), status=404)


def bad_request(request, exception=None) -> HttpResponse:
    """handler400: what Django answers for a request it refuses before any view (a Host header that
    is not a host name, a suspicious operation) — in the API's error body under /api/, Django's page
    elsewhere."""
    if request.path.startswith("/api/"):
        return JsonResponse(body("invalid_request", "Bad request."), status=400)
    return defaults.bad_request(request, exception)


def csrf_failure(request, reason: str = "") -> HttpResponse:
    """CSRF_FAILURE_VIEW: the API's error body under /api/, Django's page elsewhere (the admin)."""
    if request.path.startswith("/api/"):
        return JsonResponse(body("permission_denied", f"CSRF failed: {reason}"), status=403)
    return csrf_views.csrf_failure(request, reason=reason)


def api_error(exc: OpenbiliError) -> exceptions.APIException:
    """A service's domain error as the API's: a conflict with the object's state is a 409, anything
    else a 400 naming its field (the error's param)."""
    if exc.status == status.HTTP_409_CONFLICT:
        return Conflict(exc.message)
    return exceptions.ValidationError({exc.param or "non_field_errors": [exc.message]})


def service_call(call):
    """Run a service call, its domain error raised as the API's (api_error)."""
    try:
        return call()
    except OpenbiliError as exc:
        raise api_error(exc) from exc


def error_response(code: str, message: str, http_status: int, fields: dict | None = None) -> Response:
    return Response(body(code, message, fields), status=http_status)
