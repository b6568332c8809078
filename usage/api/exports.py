"""Usage exports: /api/v1/accounts/{account_id}/exports…

- POST …/exports `{"format": "xlsx"|"csv", <the usage page's filters>}` queues an export (201).
  The filters have the usage page's names and meaning (`started_after`, `started_before`, `model`,
  `api_key`, …); `started_before` is frozen at now at the latest. At most five of an account's
  exports are queued or running at once (429 `too_many_exports`, Retry-After).
- GET …/exports lists them, newest first; GET …/exports/{export_id} shows one: status, progress,
  rows, the reason of a failure and, once done, its `download_url`.
- POST …/exports/{export_id}/retry queues a failed or expired export again (202; 409 otherwise).
- GET …/exports/{export_id}/download is the file (an attachment): 409 before it is done, 410 once
  expired.

Members and owners alike; another account's exports are 404 (the tenancy gate, then every lookup
within the account). The job itself is usage.exports.export_run, in a Celery worker.
"""

from __future__ import annotations

from django.http import FileResponse
from django.urls import path, reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import exceptions, generics, serializers, status
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.parsers import JSONParser
from rest_framework.response import Response

from openbili.api.errors import Conflict, api_error
from openbili.api.pagination import Cursor
from openbili.api.params import check_known
from openbili.api.tenancy import AccountScoped
from openbili.core.errors import OpenbiliError
from usage import exports
from usage.api.filters import USAGE_FILTERS
from usage.models import UsageExport, UsageRecord

# --- serializers ----------------------------------------------------------------------------------


@extend_schema_field(OpenApiTypes.DATETIME)
class IsoDateTimeText(serializers.CharField):
    """An ISO 8601 time, checked by the usage page's own filter (usage/api/filters.py)."""


class ExportFiltersSerializer(serializers.Serializer):
    """The usage page's filters (GET …/usage), same names, same meaning; all optional."""

    started_after = IsoDateTimeText(required=False, help_text="Rows started at or after this time (ISO 8601).")
    started_before = IsoDateTimeText(
        required=False, help_text="Rows started before this time (ISO 8601); now at the latest, frozen at creation."
    )
    model = serializers.CharField(required=False, max_length=100, help_text="The model the client asked for.")
    api_key = serializers.IntegerField(required=False, min_value=1, max_value=2**63 - 1, help_text="An API key's id.")
    key_prefix = serializers.CharField(required=False, max_length=16, help_text="An API key's prefix (sk-ob-…).")
    endpoint = serializers.CharField(required=False, max_length=64, help_text="e.g. /v1/chat/completions")
    status = serializers.IntegerField(
        required=False, min_value=100, max_value=599, help_text="The HTTP status sent to the client."
    )
    error_class = serializers.ChoiceField(choices=UsageRecord.ErrorClass.choices, required=False)
    error_code = serializers.CharField(required=False, max_length=64, help_text="e.g. rate_limit_exceeded")
    billing_result = serializers.ChoiceField(choices=UsageRecord.BillingResult.choices, required=False)
    stream = serializers.BooleanField(required=False)
    request_id = serializers.CharField(required=False, max_length=64, help_text="req_…")
    trace_id = serializers.CharField(required=False, max_length=64, help_text="trace_…")


class ExportCreateSerializer(ExportFiltersSerializer):
    format = serializers.ChoiceField(choices=UsageExport.Format.choices, help_text="xlsx or csv.")


CREATE_FIELDS = frozenset(ExportCreateSerializer().fields)
assert frozenset(ExportFiltersSerializer().fields) == USAGE_FILTERS, "the export takes exactly the usage filters"


class ExportSerializer(serializers.ModelSerializer):
    filters = ExportFiltersSerializer(read_only=True, help_text="The filters as the export applies them.")
    created_by = serializers.CharField(
        source="created_by.username", read_only=True, allow_null=True, default=None, help_text="Who created it."
    )
    progress = serializers.SerializerMethodField()
    row_count = serializers.SerializerMethodField()
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = UsageExport
        fields: tuple[str, ...] = (
            "id",
            "format",
            "status",
            "filters",
            "progress",
            "rows_done",
            "rows_total",
            "row_count",
            "size_bytes",
            "error",
            "attempts",
            "created_by",
            "created_at",
            "started_at",
            "finished_at",
            "expires_at",
            "download_url",
        )
        read_only_fields = fields
        extra_kwargs = {"error": {"help_text": "Why it failed (then: retry it); empty otherwise."}}

    @extend_schema_field(serializers.FloatField(min_value=0, max_value=1, help_text="0 to 1; 1 only once done."))
    def get_progress(self, export: UsageExport) -> float:
        return exports.export_progress(export)

    @extend_schema_field(serializers.IntegerField(allow_null=True, help_text="Rows in the file; null until done."))
    def get_row_count(self, export: UsageExport) -> int | None:
        return export.rows_done if export.status == UsageExport.Status.DONE else None

    @extend_schema_field(serializers.CharField(allow_null=True, help_text="GET it for the file; null until done."))
    def get_download_url(self, export: UsageExport) -> str | None:
        if export.status != UsageExport.Status.DONE:
            return None
        return reverse("api-export-download", kwargs={"account_id": export.account_id, "export_id": export.pk})


class ExportErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()
    fields = serializers.DictField(child=serializers.ListField(child=serializers.CharField()))


class ExportErrorSerializer(serializers.Serializer):
    """The one error body (openbili/api/errors.py), for the answers the schema hook does not add."""

    error = ExportErrorDetailSerializer()


# --- errors ---------------------------------------------------------------------------------------


class TooManyExportsError(exceptions.APIException):
    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    default_code = "too_many_exports"

    def __init__(self, detail: str, wait: int | None) -> None:
        super().__init__(detail)
        self.wait = wait  # Retry-After


class ExportNotReadyError(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "export_not_ready"


class ExportGoneError(exceptions.APIException):
    status_code = status.HTTP_410_GONE
    default_code = "export_expired"


class ExportNotRetryableError(Conflict):
    default_code = "export_not_retryable"


def _service(call):
    """A service's domain error as the API's: the exports' own codes, else the API's one mapping."""
    try:
        return call()
    except exports.InvalidExport as exc:
        raise exceptions.ValidationError(exc.fields) from exc
    except exports.TooManyExports as exc:
        raise TooManyExportsError(exc.message, exc.retry_after) from exc
    except exports.ExportNotReady as exc:
        raise ExportNotReadyError(exc.message) from exc
    except exports.ExportGone as exc:
        raise ExportGoneError(exc.message) from exc
    except exports.ExportConflict as exc:
        raise ExportNotRetryableError(exc.message) from exc
    except OpenbiliError as exc:
        raise api_error(exc) from exc


def _filter_text(value) -> str:
    """A JSON value as the usage page's query string has it (true/false, digits, the text)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --- views ----------------------------------------------------------------------------------------


class ExportCursor(Cursor):
    ordering = ("-created_at", "-id")


class ExportScoped(AccountScoped, generics.GenericAPIView):
    serializer_class = ExportSerializer
    lookup_url_kwarg = "export_id"

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # the schema generator has no account
            return UsageExport.objects.none()
        return UsageExport.objects.filter(account=self.account).select_related("created_by")

    def answer(self, export: UsageExport, http_status: int = status.HTTP_200_OK) -> Response:
        fresh = self.get_queryset().get(pk=export.pk)  # eager tasks (no broker) may have run it already
        return Response(ExportSerializer(fresh).data, status=http_status)


CONFLICT = OpenApiResponse(ExportErrorSerializer, description="The export is not in a state that allows this.")


@extend_schema(tags=["exports"])
class ExportListView(ExportScoped, generics.ListAPIView):
    """The account's usage exports, newest first. POST creates one: a Celery job writes the
    account's usage rows matching the usage page's filters to an XLSX or CSV file."""

    pagination_class = ExportCursor
    parser_classes = [JSONParser]

    def list(self, request, *args, **kwargs):
        check_known(request, set())
        return super().list(request, *args, **kwargs)

    @extend_schema(
        request=ExportCreateSerializer,
        responses={
            201: OpenApiResponse(ExportSerializer, description="Queued (or, without a broker, already built)."),
        },
    )
    def post(self, request, *args, **kwargs):
        """Export the account's usage rows (members and owners). Columns: ids, times and timings,
        key, endpoint, model, route, status, error class, code and message, billing result, tokens
        by kind, exact cost, the frozen prices — never a secret or prompt text. Money is exact
        decimal text in both formats."""
        check_known(request, set())
        if not isinstance(request.data, dict):
            raise exceptions.ValidationError({"non_field_errors": ["Expected a JSON object."]})
        unknown = sorted(set(request.data) - CREATE_FIELDS)
        if unknown:
            raise exceptions.ValidationError({name: ["Unknown field."] for name in unknown})
        form = ExportCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = dict(form.validated_data)
        export_format = data.pop("format")
        export = _service(
            lambda: exports.export_create(
                account=self.account,
                user=request.user,
                format=export_format,
                filters={name: _filter_text(value) for name, value in data.items()},
            )
        )
        return self.answer(export, status.HTTP_201_CREATED)


@extend_schema(tags=["exports"])
class ExportView(ExportScoped, generics.RetrieveAPIView):
    """One export of the account: status (queued, running, done, failed, expired), progress, rows,
    why it failed, and its download_url once done."""

    def retrieve(self, request, *args, **kwargs):
        check_known(request, set())
        return super().retrieve(request, *args, **kwargs)


@extend_schema(tags=["exports"])
class ExportRetryView(ExportScoped):
    @extend_schema(
        request=None,
        responses={202: OpenApiResponse(ExportSerializer, description="Queued again."), 409: CONFLICT},
    )
    def post(self, request, *args, **kwargs):
        """Queue a failed or expired export again (or one whose worker died): the same filters and
        time range, so the same rows and one file. 409 for an export queued, running or done."""
        check_known(request, set())
        export = _service(lambda: exports.export_retry(export=self.get_object()))
        return self.answer(export, status.HTTP_202_ACCEPTED)


class AnyAccept(BaseContentNegotiation):
    """The file is the answer whatever the client accepts; errors are the API's JSON body."""

    def select_parser(self, request, parsers):
        return parsers[0]

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


@extend_schema(tags=["exports"])
class ExportDownloadView(ExportScoped):
    content_negotiation_class = AnyAccept

    @extend_schema(
        responses={
            (200, "text/csv"): OpenApiResponse(OpenApiTypes.BINARY, description="The CSV file."),
            (200, exports.CONTENT_TYPES[UsageExport.Format.XLSX]): OpenApiResponse(
                OpenApiTypes.BINARY, description="The XLSX file."
            ),
            409: OpenApiResponse(ExportErrorSerializer, description="Not done yet (`export_not_ready`)."),
            410: OpenApiResponse(ExportErrorSerializer, description="Expired: the file was deleted."),
        }
    )
    def get(self, request, *args, **kwargs):
        """The export's file, as an attachment (members of the export's account only)."""
        check_known(request, set())
        found = _service(lambda: exports.export_file(self.get_object()))
        response = FileResponse(
            found.file, as_attachment=True, filename=found.filename, content_type=found.content_type
        )
        response["Cache-Control"] = "private, no-store"
        response["X-Content-Type-Options"] = "nosniff"
        return response


urlpatterns = [
    path("exports", ExportListView.as_view(), name="api-exports"),
    path("exports/<uuid:export_id>", ExportView.as_view(), name="api-export"),
    path("exports/<uuid:export_id>/retry", ExportRetryView.as_view(), name="api-export-retry"),
    path("exports/<uuid:export_id>/download", ExportDownloadView.as_view(), name="api-export-download"),
]
