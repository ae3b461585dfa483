"""``owl serve``: an OpenAI-compatible HTTP server with continuous batching.

Parts, one job each: :mod:`~owl.serve.engine` (the batching loop that owns the
model), :mod:`~owl.serve.batch` (the shared left-padded KV cache),
:mod:`~owl.serve.sampling` (per-request token choice and streamed text),
:mod:`~owl.serve.openai_api` (request checks and response shapes),
:mod:`~owl.serve.image_sources` (image URLs -> bytes, with caps),
:mod:`~owl.serve.app` (the FastAPI routes), :mod:`~owl.serve.server`
(start/stop: ``run`` for the CLI, ``serve_in_thread`` in-process).
"""
