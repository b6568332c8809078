from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "openbili.core"
    label = "core"
    verbose_name = "Openbili core"
