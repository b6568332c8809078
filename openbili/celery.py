"""The Celery app. Workers: `celery -A openbili worker -B`."""

import os

from celery import Celery
from celery.signals import worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "openbili.settings")

app = Celery("openbili")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_init.connect
def _refuse_the_public_key(**kwargs) -> None:
    from openbili.core.checks import require_secret_key

    require_secret_key("to run a worker")
