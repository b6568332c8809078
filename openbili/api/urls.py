from django.urls import include, path

from openbili.api import views

urlpatterns = [
    path("auth/csrf", views.CsrfView.as_view(), name="api-csrf"),
    path("auth/login", views.LoginView.as_view(), name="api-login"),
    path("auth/logout", views.LogoutView.as_view(), name="api-logout"),
    path("me", views.MeView.as_view(), name="api-me"),
    path("me/tokens", views.TokenListView.as_view(), name="api-tokens"),
    path("me/tokens/<int:pk>", views.TokenView.as_view(), name="api-token"),
    path("accounts/<int:account_id>/", include("billing.api.urls")),
    path("accounts/<int:account_id>/", include("usage.api.urls")),
    path("", include("tickets.api.views")),
]
