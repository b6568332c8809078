from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "openbili.api"
    label = "api"
    verbose_name = "Dashboard API"
    default_auto_field = "django.db.models.BigAutoField"
