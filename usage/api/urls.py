from usage.api import exports, rows, summary

urlpatterns = [*rows.urlpatterns, *summary.urlpatterns, *exports.urlpatterns]
