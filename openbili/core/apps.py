from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "openbili.core"
    label = "core"
    verbose_name = "Openbili core"

    def ready(self) -> None:
        from openbili.core import checks  # noqa: F401 - registers the SECRET_KEY deploy check
