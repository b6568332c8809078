"""The model plaza: the models this account's keys may call, as the API's plaza computes them
(billing/api/plaza.py: one visibility rule), with a copyable curl and Python snippet per model."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse

from billing.api.plaza import plaza_model
from billing.api.plaza_serializers import PlazaModelSerializer
from billing.selectors import plaza_entries
from openbili.console.access import account_page
from openbili.console.pages import base_url, page

# The first endpoint a model is served on picks its snippet.
SNIPPETS = {
    "/v1/chat/completions": (
        'curl {base}/v1/chat/completions -H "Authorization: Bearer $OPENBILI_API_KEY" '
        '-H "Content-Type: application/json" -d \'{{"model": "{model}", "messages": '
        '[{{"role": "user", "content": "Hello"}}]}}\'',
        'from openai import OpenAI\n\nclient = OpenAI(api_key=os.environ["OPENBILI_API_KEY"], base_url="{base}/v1")\n'
        'reply = client.chat.completions.create(model="{model}", messages=[{{"role": "user", "content": "Hello"}}])\n'
        "print(reply.choices[0].message.content)",
    ),
    "/v1/images/generations": (
        'curl {base}/v1/images/generations -H "Authorization: Bearer $OPENBILI_API_KEY" '
        '-H "Content-Type: application/json" -d \'{{"model": "{model}", "prompt": "A red fox"}}\'',
        'from openai import OpenAI\n\nclient = OpenAI(api_key=os.environ["OPENBILI_API_KEY"], base_url="{base}/v1")\n'
        'image = client.images.generate(model="{model}", prompt="A red fox")\nprint(image.data[0].url)',
    ),
    "/v1/messages": (
        'curl {base}/v1/messages -H "x-api-key: $OPENBILI_API_KEY" -H "anthropic-version: 2023-06-01" '
        '-H "Content-Type: application/json" -d \'{{"model": "{model}", "max_tokens": 256, "messages": '
        '[{{"role": "user", "content": "Hello"}}]}}\'',
        "from anthropic import Anthropic\n\n"
        'client = Anthropic(api_key=os.environ["OPENBILI_API_KEY"], base_url="{base}")\n'
        'reply = client.messages.create(\n    model="{model}", max_tokens=256,\n'
        '    messages=[{{"role": "user", "content": "Hello"}}],\n)\n'
        "print(reply.content[0].text)",
    ),
}


def snippets(name: str, endpoints: list[str], base: str) -> dict[str, str] | None:
    for endpoint in endpoints:
        if endpoint in SNIPPETS:
            curl, python = SNIPPETS[endpoint]
            return {
                "curl": curl.format(base=base, model=name),
                "python": "import os\n" + python.format(base=base, model=name),
            }
    return None


@account_page
def plaza(request: HttpRequest, member) -> HttpResponse:
    base = base_url(request)
    models = sorted(
        (plaza_model(row) for row in plaza_entries(account=member.account)), key=lambda m: (not m.visible, m.name)
    )
    shown = []
    for model in models:
        data = dict(PlazaModelSerializer(model).data)
        data["snippets"] = snippets(model.name, model.endpoints, base)
        shown.append(data)
    return page(request, member, "console/plaza.html", {"models": shown, "section": "plaza"})
