"""Celery beat's scheduler: django-celery-beat's, with the schedule's defaults installed once.

The stock DatabaseScheduler writes every entry of CELERY_BEAT_SCHEDULE back into the database at
each start, so an operator's edit in the admin ("Periodic tasks": another hour for the invoices, a
job disabled) would silently revert at the next deploy. This one installs a default only when no
periodic task of that name exists: the settings seed the schedule, the database owns it.
"""

from __future__ import annotations

from django_celery_beat.schedulers import DatabaseScheduler


class Scheduler(DatabaseScheduler):
    def setup_schedule(self):
        from django_celery_beat.models import PeriodicTask  # Django is ready once beat runs

        self.install_default_entries(self.schedule)
        defaults = self.app.conf.beat_schedule
        present = set(PeriodicTask.objects.filter(name__in=list(defaults)).values_list("name", flat=True))
        self.update_from_dict({name: entry for name, entry in defaults.items() if name not in present})
