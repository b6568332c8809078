"""The dashboard API's billing endpoints, under /api/v1/accounts/{account_id}/ (openbili/api):
API keys and their audit trail (keys.py), the model plaza (plaza.py), balance and ledger
(balance.py). Each module lists its own `urlpatterns`."""
