"""The fake upstream keeps Responses as OpenAI does: stored by default under the caller's key,
retrievable, deletable, chained with previous_response_id, and run in the background."""

from __future__ import annotations

import json
import time

import aiohttp
import openai
import pytest

from openbili.fake_upstream import DEFAULT_CHUNKS

BEARER = {"Authorization": "Bearer sk-test"}
OTHER = {"Authorization": "Bearer sk-other"}


def oai(fake, key: str = "sk-test", **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.url + "/v1", api_key=key, max_retries=0, **kw)


async def call(fake, method: str, path: str, body: dict | None = None, headers=BEARER) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s, s.request(method, fake.url + path, json=body, headers=headers) as r:
        return r.status, json.loads(await r.read())


def not_found(rid: str) -> dict:
    return {
        "error": {
            "message": f"Response with id '{rid}' not found.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }


def wait_for(client: openai.OpenAI, rid: str, *, timeout: float = 5.0):
    """Poll like a background client does, until the response is over."""
    deadline = time.monotonic() + timeout
    while True:
        r = client.responses.retrieve(rid)
        if r.status not in ("queued", "in_progress") or time.monotonic() > deadline:
            return r
        time.sleep(0.02)


@pytest.fixture
def stateful(fake_upstream):
    yield fake_upstream
    fake_upstream.configure(background_delay_ms=200, max_responses=1000)


# --------------------------------------------------------------------------------------------------
# store, retrieve, delete
# --------------------------------------------------------------------------------------------------


async def test_stored_by_default_and_retrieved_byte_for_byte(stateful):
    status, created = await call(stateful, "POST", "/v1/responses", {"model": "gpt-4o", "input": "hi there"})
    assert status == 200
    assert created["store"] is True

    status, got = await call(stateful, "GET", f"/v1/responses/{created['id']}")

    assert status == 200
    assert got == created


def test_retrieve_with_sdk(stateful):
    client = oai(stateful)
    r = client.responses.create(model="gpt-4o", input="say hello please", instructions="be nice")

    got = client.responses.retrieve(r.id)

    assert got.id == r.id
    assert got.status == "completed"
    assert got.output_text == r.output_text
    assert got.usage.input_tokens == 5
    assert got.usage.output_tokens == DEFAULT_CHUNKS


def test_store_false_is_not_kept(stateful):
    client = oai(stateful)
    r = client.responses.create(model="gpt-4o", input="hi", store=False)
    assert r.store is False

    with pytest.raises(openai.NotFoundError) as exc:
        client.responses.retrieve(r.id)
    assert exc.value.status_code == 404
    assert json.loads(exc.value.response.content) == not_found(r.id)


def test_streamed_response_is_stored_when_complete(stateful):
    client = oai(stateful)
    events = list(client.responses.create(model="gpt-4o", input="hi", stream=True))
    final = events[-1].response

    got = client.responses.retrieve(final.id)

    assert got.status == "completed"
    assert got.usage.output_tokens == final.usage.output_tokens == DEFAULT_CHUNKS


def test_cut_stream_is_not_stored(stateful):
    client = oai(stateful)
    stateful.script(cut_after_chunks=2)
    ids = []
    with pytest.raises(openai.APIError):
        for event in client.responses.create(model="gpt-4o", input="hi", stream=True):
            if event.type == "response.created":
                ids.append(event.response.id)

    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(ids[0])


async def test_delete(stateful):
    client = oai(stateful)
    r = client.responses.create(model="gpt-4o", input="hi")

    assert client.responses.delete(r.id) is None

    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    status, body = await call(stateful, "DELETE", f"/v1/responses/{r.id}")
    assert (status, body) == (404, not_found(r.id))


async def test_delete_raw_body(stateful):
    rid = oai(stateful).responses.create(model="gpt-4o", input="hi").id

    status, body = await call(stateful, "DELETE", f"/v1/responses/{rid}")

    assert status == 200
    assert body == {"id": rid, "object": "response", "deleted": True}


async def test_unknown_id_is_404_in_openai_format(stateful):
    for method, path in (
        ("GET", "/v1/responses/resp_nope"),
        ("DELETE", "/v1/responses/resp_nope"),
        ("POST", "/v1/responses/resp_nope/cancel"),
    ):
        assert await call(stateful, method, path) == (404, not_found("resp_nope"))


async def test_routes_need_a_bearer_key(stateful):
    status, body = await call(stateful, "GET", "/v1/responses/resp_nope", headers={})
    assert status == 401
    assert body["error"]["message"].startswith("You didn't provide an API key.")


def test_another_key_sees_nothing(stateful):
    mine, theirs = oai(stateful), oai(stateful, key="sk-other")
    r = mine.responses.create(model="gpt-4o", input="hi")
    bg = mine.responses.create(model="gpt-4o", input="hi", background=True)

    with pytest.raises(openai.NotFoundError):
        theirs.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        theirs.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        theirs.responses.cancel(bg.id)
    with pytest.raises(openai.BadRequestError) as exc:
        theirs.responses.create(model="gpt-4o", input="more", previous_response_id=r.id)
    assert exc.value.code == "previous_response_not_found"

    assert mine.responses.retrieve(r.id).status == "completed"  # nothing was deleted or cancelled
    assert wait_for(mine, bg.id).status == "completed"


def test_store_is_bounded_oldest_first(stateful):
    stateful.configure(max_responses=3)
    client = oai(stateful)
    ids = [client.responses.create(model="gpt-4o", input="hi").id for _ in range(4)]

    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(ids[0])
    assert [client.responses.retrieve(rid).id for rid in ids[1:]] == ids[1:]
    assert stateful.state.stored_responses == 3


def test_reset_forgets_stored_responses(stateful):
    client = oai(stateful)
    rid = client.responses.create(model="gpt-4o", input="hi").id

    stateful.reset()

    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(rid)


def test_scenarios_reach_the_stateful_routes_by_path_only(stateful):
    client = oai(stateful)
    rid = client.responses.create(model="gpt-4o", input="hi").id
    stateful.script(status=500)  # no path: a generation scenario, never consumed by a retrieve
    assert client.responses.retrieve(rid).id == rid
    assert len(stateful.pending) == 1
    stateful.reset()

    rid = client.responses.create(model="gpt-4o", input="hi").id
    stateful.script(path=f"/responses/{rid}", status=503)
    with pytest.raises(openai.InternalServerError):
        client.responses.retrieve(rid)
    assert client.responses.retrieve(rid).id == rid


# --------------------------------------------------------------------------------------------------
# previous_response_id
# --------------------------------------------------------------------------------------------------


def test_unknown_previous_response_is_400(stateful):
    with pytest.raises(openai.BadRequestError) as exc:
        oai(stateful).responses.create(model="gpt-4o", input="hi", previous_response_id="resp_gone")

    assert exc.value.status_code == 400
    assert exc.value.body == {
        "message": "Previous response with id 'resp_gone' not found.",
        "type": "invalid_request_error",
        "param": "previous_response_id",
        "code": "previous_response_not_found",
    }


def test_previous_response_tokens_count_as_input(stateful):
    client = oai(stateful)
    first = client.responses.create(model="gpt-4o", input="one two three")  # 3 in, 8 out
    assert (first.usage.input_tokens, first.usage.output_tokens) == (3, DEFAULT_CHUNKS)

    second = client.responses.create(model="gpt-4o", input="four five", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    assert second.usage.input_tokens == 2 + 3 + DEFAULT_CHUNKS

    third = client.responses.create(model="gpt-4o", input="six", previous_response_id=second.id)
    assert third.usage.input_tokens == 1 + second.usage.input_tokens + second.usage.output_tokens


def test_deleted_previous_response_is_not_found(stateful):
    client = oai(stateful)
    first = client.responses.create(model="gpt-4o", input="hi")
    client.responses.delete(first.id)

    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.create(model="gpt-4o", input="hi", previous_response_id=first.id)
    assert exc.value.code == "previous_response_not_found"


# --------------------------------------------------------------------------------------------------
# background
# --------------------------------------------------------------------------------------------------


def test_background_is_queued_then_completed_with_usage(stateful):
    stateful.configure(background_delay_ms=300)
    client = oai(stateful)

    r = client.responses.create(model="gpt-4o", input="one two three", background=True)

    assert r.status == "queued"
    assert r.background is True
    assert r.usage is None
    assert r.output == []
    assert client.responses.retrieve(r.id).status in ("queued", "in_progress")
    done = wait_for(client, r.id)
    assert done.status == "completed"
    assert done.background is True
    assert done.output_text == "Hello from the fake upstream. This is a"
    assert (done.usage.input_tokens, done.usage.output_tokens) == (3, DEFAULT_CHUNKS)


def test_background_passes_through_in_progress(stateful):
    stateful.script(background_delay_ms=400)
    client = oai(stateful)
    r = client.responses.create(model="gpt-4o", input="hi", background=True)
    seen = []
    while not seen or seen[-1] in ("queued", "in_progress"):
        seen.append(client.responses.retrieve(r.id).status)
        time.sleep(0.02)

    assert seen[0] == "queued"
    assert "in_progress" in seen
    assert seen[-1] == "completed"


async def test_background_needs_store(stateful):
    body = {"model": "gpt-4o", "input": "hi", "background": True, "store": False}
    status, got = await call(stateful, "POST", "/v1/responses", body)

    assert status == 400
    assert got["error"]["param"] == "background"
    assert got["error"]["type"] == "invalid_request_error"


def test_cancel_background(stateful):
    stateful.script(background_delay_ms=10_000)
    client = oai(stateful)
    r = client.responses.create(model="gpt-4o", input="hi", background=True)

    cancelled = client.responses.cancel(r.id)

    assert cancelled.status == "cancelled"
    assert client.responses.retrieve(r.id).status == "cancelled"
    assert client.responses.cancel(r.id).status == "cancelled"  # idempotent


def test_cancel_finished_background_returns_it_unchanged(stateful):
    stateful.configure(background_delay_ms=20)
    client = oai(stateful)
    rid = client.responses.create(model="gpt-4o", input="hi", background=True).id
    done = wait_for(client, rid)

    again = client.responses.cancel(rid)

    assert again.status == "completed"
    assert again.usage == done.usage


def test_cancel_synchronous_response_is_400(stateful):
    client = oai(stateful)
    rid = client.responses.create(model="gpt-4o", input="hi").id

    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.cancel(rid)

    assert exc.value.body["message"] == "Cannot cancel a synchronous response."
    assert client.responses.retrieve(rid).status == "completed"


def test_deleted_background_never_reappears(stateful):
    stateful.configure(background_delay_ms=50)
    client = oai(stateful)
    rid = client.responses.create(model="gpt-4o", input="hi", background=True).id
    client.responses.delete(rid)
    time.sleep(0.1)

    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(rid)


def test_background_can_end_failed(stateful):
    stateful.script(background_delay_ms=20, background_status="failed", message="boom")
    client = oai(stateful)
    rid = client.responses.create(model="gpt-4o", input="hi", background=True).id

    done = wait_for(client, rid)

    assert done.status == "failed"
    assert done.error.code == "server_error"
    assert done.error.message == "boom"
    assert done.usage is None


def test_finished_background_response_feeds_previous_response_id(stateful):
    stateful.configure(background_delay_ms=20)
    client = oai(stateful)
    rid = client.responses.create(model="gpt-4o", input="one two", background=True).id
    wait_for(client, rid)

    nxt = client.responses.create(model="gpt-4o", input="three", previous_response_id=rid)

    assert nxt.usage.input_tokens == 1 + 2 + DEFAULT_CHUNKS


def test_background_stream_then_retrieve_and_replay(stateful):
    client = oai(stateful)
    events = list(client.responses.create(model="gpt-4o", input="hi", background=True, stream=True))
    types = [e.type for e in events]

    assert types[:3] == ["response.created", "response.queued", "response.in_progress"]
    assert events[0].response.status == "queued"
    assert events[0].response.background is True
    assert types[-1] == "response.completed"
    rid = events[-1].response.id
    assert client.responses.retrieve(rid).status == "completed"

    replay = list(client.responses.retrieve(rid, stream=True, starting_after=5))
    assert [e.sequence_number for e in replay] == [e.sequence_number for e in events[6:]]
    assert replay[-1].type == "response.completed"
    assert replay[-1].response.usage.output_tokens == DEFAULT_CHUNKS


def test_cut_background_stream_still_completes(stateful):
    stateful.script(cut_after_chunks=2)
    client = oai(stateful)
    ids = []
    with pytest.raises(openai.APIError):
        for event in client.responses.create(model="gpt-4o", input="hi", background=True, stream=True):
            if event.type == "response.created":
                ids.append(event.response.id)

    done = wait_for(client, ids[0])  # what a gateway uses to recover the usage of a cut stream
    assert done.status == "completed"
    assert done.usage.output_tokens == DEFAULT_CHUNKS


async def test_replay_needs_a_background_stream(stateful):
    rid = oai(stateful).responses.create(model="gpt-4o", input="hi").id

    status, body = await call(stateful, "GET", f"/v1/responses/{rid}?stream=true")

    assert status == 400
    assert body["error"]["param"] == "stream"
