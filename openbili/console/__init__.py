"""The customer console: server-rendered pages at /console/ over the services and selectors the
dashboard API uses (billing.services, usage.selectors, usage.exports, tickets.services), with the
API's serializers as the one definition of what a customer may see of a key, a usage row or a
ticket — so no page can show more than the API does (never a key's hash or secret after creation,
an upstream secret or prompt text). Every asset is served by the project: no CDN, no build step.
"""
