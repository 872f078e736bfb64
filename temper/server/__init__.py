"""temper's HTTP edge: an OpenAI-compatible FastAPI server (`temper serve`) over the engines
and strategies in `temper.decoding`. One request flows one way: routes_* (parse the body) →
prompts (token ids, settings, strategy: every 400) → runner (admission, weights, timeout,
disconnects) → strategy → engine, and back through responses (JSON) or streaming (SSE).
Beside them: config, cli, app, state, edge (auth, body limits), protocol, errors, logprobs,
text, weights (updates), metrics, models. Nothing here decodes: strategies do."""
