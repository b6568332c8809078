from usage.api import rows, summary

urlpatterns = [*rows.urlpatterns, *summary.urlpatterns]
