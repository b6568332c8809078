"""The dashboard API's usage endpoints, under /api/v1/accounts/{account_id}/ (openbili/api): the
usage page (rows.py), its summary and OpenAI-Usage-API-shaped aggregates (summary.py). Each
module lists its own `urlpatterns`."""
