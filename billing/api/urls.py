from billing.api import balance, keys, plaza

urlpatterns = [*keys.urlpatterns, *plaza.urlpatterns, *balance.urlpatterns]
