"""The Celery app. Workers: `celery -A openbili worker -B`."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "openbili.settings")

app = Celery("openbili")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
