"""The dashboard REST API under /api/v1/ (issue 11): what customers' scripts and dashboards use.

Shared pieces live here — authentication (session with CSRF, personal tokens), tenancy (every
object through the caller's membership), the one error body, pagination — and the endpoints of
each domain sit with their domain (billing/api.py, usage/api.py) over the same services and
selectors the admin and the gateway use.
"""
