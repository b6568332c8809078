"""GET /v1/models and /v1/models/{id}: OpenAI's list format, the models this key may use now."""

from __future__ import annotations

import json

from openbili.core.errors import ModelNotFound
from usage.gateway.context import Ctx, authenticate, now_utc, send_bytes
from usage.gateway.endpoints import chat
from usage.gateway.state import GatewayState, ModelInfo

ENDPOINT = chat.ENDPOINT  # its errors are OpenAI's, like the chat endpoint's


def model_json(model: ModelInfo) -> dict:
    return {"id": model.name, "object": "model", "created": model.created, "owned_by": model.owned_by}


async def handle(state: GatewayState, ctx: Ctx, send, model_id: str | None = None) -> None:
    """Raises OpenbiliError for the router to answer in OpenAI's format."""
    key = await authenticate(state, ctx)
    catalog = await state.catalog()
    if model_id is None:
        data = [model_json(m) for m in catalog.values() if m.visible and key.allows(m.name)]
        body: dict = {"object": "list", "data": data}
    else:
        ctx.new_row(model=model_id)
        model = catalog.get(model_id)
        if model is None or not model.visible or not key.allows(model_id):
            raise ModelNotFound(
                f"The model '{model_id[:100]}' does not exist or is not available to this key.", param="model"
            )
        body = model_json(model)
    row = ctx.row or ctx.new_row()
    row.update(status=200, billing_result="not_billed", finished_at=now_utc())
    await state.write_row(row)  # deferred to the outbox while the database is away: served from cache
    ctx.row_written = True
    await send_bytes(send, ctx, 200, json.dumps(body).encode())
