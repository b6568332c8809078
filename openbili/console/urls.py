from django.urls import include, path, re_path

from openbili.console.views import auth, billing, keys, overview, plaza, tickets, usage

REQUEST_ID = r"(?P<request_id>req_[A-Za-z0-9_-]{1,60})"

urlpatterns = [
    path("", auth.home, name="console-home"),
    path("login", auth.login_page, name="console-login"),
    path("logout", auth.logout_page, name="console-logout"),
    path("i18n/", include("django.conf.urls.i18n")),  # set_language: the language switch
    path("<int:account_id>/", overview.overview, name="console-overview"),
    path("<int:account_id>/keys", keys.key_list, name="console-keys"),
    path("<int:account_id>/keys/<int:key_id>", keys.key_edit, name="console-key"),
    path("<int:account_id>/keys/<int:key_id>/<str:action>", keys.key_action, name="console-key-action"),
    path("<int:account_id>/models", plaza.plaza, name="console-plaza"),
    path("<int:account_id>/usage", usage.usage_list, name="console-usage"),
    re_path(rf"^(?P<account_id>[0-9]+)/usage/{REQUEST_ID}$", usage.usage_row, name="console-usage-row"),
    re_path(rf"^(?P<account_id>[0-9]+)/usage/{REQUEST_ID}/ticket$", usage.ticket_new, name="console-ticket-new"),
    path("<int:account_id>/tickets", tickets.ticket_list, name="console-tickets"),
    path("<int:account_id>/tickets/<int:ticket_id>", tickets.ticket_detail, name="console-ticket"),
    path("<int:account_id>/billing", billing.billing, name="console-billing"),
    path("<int:account_id>/exports", billing.export_start, name="console-export-start"),
]
