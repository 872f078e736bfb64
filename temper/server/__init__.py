"""temper's HTTP edge: an OpenAI-compatible FastAPI server (`temper serve`) over the engines
and strategies in `temper.decoding`. One concept per module: config, cli, app, protocol,
routes_*, serving (request → jobs), respond / streaming (JSON or SSE), logprobs, text, errors,
auth, metrics, models. Nothing here decodes: strategies do."""
