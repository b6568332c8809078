"""An upstream that compresses its answer anyway (issue "hardening" #1: every non-stream call was
a 502 and a not_billed row, while the probe, which decompresses, kept the model visible)."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest

from billing import money
from openbili.core.errors import UpstreamError
from tests.gateway.support import MSG, assert_ids, assert_outcome, cost_of
from tests.gateway_fixtures import CLAUDE, CLAUDE_PRICES
from usage.gateway.content_coding import Decoder, decoder_for


def test_upstreams_are_asked_for_identity_and_a_gzip_answer_is_decoded_billed_and_relayed(gateway):
    # given an upstream that gzips its answer whatever it was asked
    gateway.upstream.script(gzip=True, tokens={"prompt": 10, "completion": 8})
    # when a customer calls
    response = gateway.post("/v1/chat/completions", json={"model": "gpt-5", "messages": MSG})
    # then the gateway asked for an uncompressed answer, and relays the decoded JSON
    assert gateway.upstream.requests[-1]["headers"]["accept-encoding"] == "identity"
    assert response.status_code == 200, response.text
    assert response.headers.get("content-encoding") is None
    assert response.json()["choices"][0]["message"]["content"] == "Hello from the fake upstream. This is a"
    request_id, _ = assert_ids(response.headers)
    assert_outcome(
        gateway, request_id, billing_result="billed", status=200, cost=cost_of(input_tokens=10, output_tokens=8)
    )


def test_a_gzip_answer_on_a_translated_route_is_decoded_too(claude):
    claude.upstream.script(gzip=True, tokens={"prompt": 10, "completion": 8})
    response = claude.post("/v1/chat/completions", json={"model": CLAUDE, "messages": MSG})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 8
    request_id, _ = assert_ids(response.headers)
    cost = money.usage_cost(money.Prices(**CLAUDE_PRICES), money.TokenUsage(input_tokens=10, output_tokens=8))
    assert_outcome(claude, request_id, billing_result="billed", status=200, cost=cost)


def test_a_gzip_error_body_keeps_the_upstreams_message(gateway):
    gateway.upstream.script(gzip=True, status=400, message="messages[0].content: too long")
    response = gateway.post("/v1/chat/completions", json={"model": "gpt-5", "messages": MSG})
    assert response.status_code == 400
    assert "too long" in response.json()["error"]["message"]


def raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-15)
    return packer.compress(data) + packer.flush()


@pytest.mark.parametrize(
    ("coding", "encode"),
    [("gzip", gzip.compress), ("deflate", zlib.compress), ("deflate", raw_deflate)],
    ids=["gzip", "deflate-zlib", "deflate-raw"],  # RFC 9110 says zlib; some servers send raw deflate
)
def test_the_decoder_undoes_each_coding_in_pieces(coding, encode):
    body = json.dumps({"text": "x" * 5000}).encode()
    packed = encode(body)
    decoder = decoder_for({"Content-Encoding": coding})
    assert decoder is not None
    assert b"".join(decoder.feed(packed[i : i + 7]) for i in range(0, len(packed), 7)) == body


def test_unsupported_or_corrupt_or_bomb_codings_are_upstream_errors(monkeypatch):
    assert decoder_for({}) is None and decoder_for({"Content-Encoding": "identity"}) is None
    with pytest.raises(UpstreamError, match="unsupported"):
        decoder_for({"Content-Encoding": "br"})
    with pytest.raises(UpstreamError, match="corrupt"):
        Decoder("gzip").decode(b"not gzip at all")
    monkeypatch.setattr("usage.gateway.content_coding.MAX_DECODED_BYTES", 1000)
    with pytest.raises(UpstreamError, match="too large"):
        Decoder("gzip").decode(gzip.compress(b"0" * 10_000))
