"""GET /v1/models and /v1/models/{id}: OpenAI's list format, the models this key may use now."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal

from openbili.core.errors import ModelNotFound
from usage.gateway.context import Ctx, authenticate, now_utc, send_bytes
from usage.gateway.endpoints import chat
from usage.gateway.endpoints.served import endpoints_served
from usage.gateway.state import GatewayState, ModelInfo

ENDPOINT = chat.ENDPOINT  # its errors are OpenAI's, like the chat endpoint's


# What a model reads and writes, by kind (every launch chat model takes images in).
MODALITIES = {"chat": (["text", "image"], ["text"]), "image": (["text", "image"], ["image"])}
PRICE_FIELDS = ("input_per_mtok", "cached_input_per_mtok", "cache_write_per_mtok", "output_per_mtok")


def model_json(model: ModelInfo, now: datetime) -> dict:
    """OpenAI's four fields, then what a client needs to choose (as OpenRouter's list does): the
    entry points it serves, its limits, modalities and current prices. The SDKs keep the extra
    fields (`model.model_extra` in openai-python); prices are exact decimal strings, in USD."""
    inputs, outputs = MODALITIES.get(model.kind, (["text"], ["text"]))
    price = model.price_at(now)
    pricing = None
    if price is not None:
        prices = price.prices
        pricing = {"currency": "USD"} | {name: _decimal(getattr(prices, name)) for name in PRICE_FIELDS}
        pricing |= {"per_image": _decimal(prices.per_image), "per_request": _decimal(prices.per_request)}
    return {
        "id": model.name,
        "object": "model",
        "created": model.created,
        "owned_by": model.owned_by,
        "kind": model.kind,
        "endpoints": endpoints_served(model),
        "context_window": model.context_window,
        "max_output_tokens": model.max_output_tokens,
        "input_modalities": inputs,
        "output_modalities": outputs,
        "pricing": pricing,
    }


def _decimal(value: Decimal) -> str:
    return f"{value.normalize():f}" if value else "0"


async def handle(state: GatewayState, ctx: Ctx, send, model_id: str | None = None) -> None:
    """Raises OpenbiliError for the router to answer in OpenAI's format."""
    key = await authenticate(state, ctx)
    catalog = await state.catalog()
    if model_id is None:
        data = [model_json(m, ctx.started_at) for m in catalog.values() if m.visible and key.allows(m.name)]
        body: dict = {"object": "list", "data": data}
    else:
        ctx.new_row(model=model_id)
        model = catalog.get(model_id)
        if model is None or not model.visible or not key.allows(model_id):
            raise ModelNotFound(
                f"The model '{model_id[:100]}' does not exist or is not available to this key.", param="model"
            )
        body = model_json(model, ctx.started_at)
    row = ctx.row or ctx.new_row()
    row.update(status=200, billing_result="not_billed", finished_at=now_utc())
    await state.write_row(row)  # deferred to the outbox while the database is away: served from cache
    ctx.row_written = True
    await send_bytes(send, ctx, 200, json.dumps(body).encode())
