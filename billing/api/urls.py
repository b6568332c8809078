from billing.api import balance, invoices, keys, members, plaza

urlpatterns = [*keys.urlpatterns, *members.urlpatterns, *plaza.urlpatterns, *balance.urlpatterns, *invoices.urlpatterns]
