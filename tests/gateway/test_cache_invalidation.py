"""Gateway processes cache keys and the catalog; PostgreSQL NOTIFY triggers (billing migration
0003) must invalidate them on any change, without waiting for the cache TTL."""

import time

from billing import services
from billing.models import ApiKey, CatalogModel
from tests.gateway.support import MSG


def eventually(check, seconds: float = 5.0):
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, "the gateway kept serving from a stale cache"
        time.sleep(0.05)


def test_disabling_a_key_takes_effect_without_waiting_for_the_ttl(gateway):
    assert gateway.get("/v1/models").status_code == 200  # the key is now cached
    services.key_disable(key=ApiKey.objects.get(account=gateway.account))
    eventually(lambda: gateway.get("/v1/models").status_code == 401)


def test_a_new_price_and_a_disabled_model_reach_the_gateway_without_a_refresh(gateway):
    chat = {"model": "gpt-5", "messages": MSG, "max_tokens": 10}
    assert gateway.post("/v1/chat/completions", json=chat).status_code == 200  # catalog cached
    model = CatalogModel.objects.get(name="gpt-5")
    version, _ = services.price_version_publish(model=model, prices={"input_per_mtok": "2", "output_per_mtok": "20"})

    def billed_at_new_price():
        response = gateway.post("/v1/chat/completions", json=chat)
        return gateway.row(response.headers["x-request-id"]).price_snapshot.price_version_id == version.pk

    eventually(billed_at_new_price)
    CatalogModel.objects.filter(pk=model.pk).update(enabled=False)
    eventually(lambda: gateway.post("/v1/chat/completions", json=chat).status_code == 404)
