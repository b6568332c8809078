from billing.api import balance, keys, members, plaza

urlpatterns = [*keys.urlpatterns, *members.urlpatterns, *plaza.urlpatterns, *balance.urlpatterns]
