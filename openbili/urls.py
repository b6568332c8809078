from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from openbili.api.errors import not_found

handler400 = "openbili.api.errors.bad_request"

admin.site.site_header = "Openbili operations"
admin.site.site_title = "Openbili admin"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("console/", include("openbili.console.urls")),
    path("api/v1/", include("openbili.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="api-redoc"),
    re_path(r"^api/", not_found),  # anything else under /api/: the API's own 404 body
]
