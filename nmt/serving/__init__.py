"""The HTTP server (serve.py): LitServe APIs over the Translator and the Captioner. May
import inference and every layer below it; only nmt.cli imports it.

- ``requests``: the request bodies, their limits and one-line errors (HTTP process)
- ``api``: the LitServe APIs, dynamic batching of translation requests (worker process)
- ``app``: the app: body limit, checks, routes, error shape, graceful shutdown
- ``server``: serve.py's command: configuration and startup checks

The API contract and the design: docs/serving.md.
"""
