"""rows endpoints of the dashboard API."""

urlpatterns: list = []
