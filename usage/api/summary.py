"""summary endpoints of the dashboard API."""

urlpatterns: list = []
