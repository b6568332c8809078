"""The console's forms. A key's settings are checked by the API's own serializer
(billing.api.keys_serializers.KeyWriteSerializer), so both doors accept exactly the same values."""

from __future__ import annotations

from django import forms
from django.utils.translation import gettext_lazy as _

from billing.api.keys_serializers import LIMIT_MAX, KeyWriteSerializer
from billing.models import CatalogModel
from tickets.models import SUBJECT_MAX, TEXT_MAX
from usage.models import UsageExport


def _model_choices() -> list[tuple[str, str]]:
    return [
        (name, name)
        for name in CatalogModel.objects.filter(enabled=True).order_by("name").values_list("name", flat=True)
    ]


class KeyForm(forms.Form):
    name = forms.CharField(label=_("Name"), max_length=64)
    all_models = forms.BooleanField(label=_("Every model"), required=False, initial=True)
    allowed_models = forms.MultipleChoiceField(
        label=_("Only these models"), required=False, help_text=_("Used when “Every model” is off.")
    )
    rpm_limit = forms.IntegerField(
        label=_("Requests per minute"),
        min_value=1,
        max_value=LIMIT_MAX,
        required=False,
        help_text=_("Empty: no limit."),
    )
    tpm_limit = forms.IntegerField(
        label=_("Tokens per minute"), min_value=1, max_value=LIMIT_MAX, required=False, help_text=_("Empty: no limit.")
    )
    expires_at = forms.DateTimeField(
        label=_("Expires at (UTC)"),
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"],
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["allowed_models"].choices = _model_choices()  # type: ignore[attr-defined]

    def clean(self):
        data = super().clean() or {}
        if self.errors:
            return data
        values = {
            "name": data["name"],
            "all_models": bool(data.get("all_models")),
            "allowed_models": [] if data.get("all_models") else list(data.get("allowed_models") or []),
            "rpm_limit": data.get("rpm_limit"),
            "tpm_limit": data.get("tpm_limit"),
            "expires_at": data.get("expires_at"),
        }
        check = KeyWriteSerializer(data=values)
        if not check.is_valid():
            for field, messages in check.errors.items():
                for message in messages:
                    self.add_error(field if field in self.fields else None, str(message))
            return data
        return check.validated_data | {"all_models": values["all_models"], "allowed_models": values["allowed_models"]}

    def settings(self) -> dict:
        """The cleaned values, named as billing.services.key_update takes them."""
        data = self.cleaned_data
        names = ("name", "all_models", "allowed_models", "rpm_limit", "tpm_limit", "expires_at")
        return {name: data.get(name) for name in names}

    @classmethod
    def of_key(cls, key) -> KeyForm:
        return cls(
            initial={
                "name": key.name,
                "all_models": key.all_models,
                "allowed_models": key.allowed_models,
                "rpm_limit": key.rpm_limit,
                "tpm_limit": key.tpm_limit,
                "expires_at": key.expires_at,
            }
        )


class TicketForm(forms.Form):
    subject = forms.CharField(label=_("Subject"), max_length=SUBJECT_MAX)
    description = forms.CharField(
        label=_("What happened"), widget=forms.Textarea(attrs={"rows": 5}), max_length=TEXT_MAX
    )
    tried = forms.CharField(
        label=_("What you tried"), widget=forms.Textarea(attrs={"rows": 3}), required=False, max_length=TEXT_MAX
    )


class ReplyForm(forms.Form):
    body = forms.CharField(label=_("Reply"), widget=forms.Textarea(attrs={"rows": 4}), max_length=TEXT_MAX)


class ExportForm(forms.Form):
    format = forms.ChoiceField(label=_("Format"), choices=UsageExport.Format.choices, initial=UsageExport.Format.XLSX)
