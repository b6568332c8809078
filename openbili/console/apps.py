from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    name = "openbili.console"
    label = "console"
    verbose_name = "Customer console"
