"""The official `openai` Python client against a running `serve`: models, chat (whole and streamed),
completions with prompt log-probs, and the errors the client raises. Prints what it saw as one JSON
object; the Rust test (bins/serve/tests/clients.rs) judges it.

usage: python openai_check.py BASE_URL QUESTION MAX_TOKENS SYSTEM SEED
"""
import json
import sys

import openai

base, question, max_tokens, system, seed = sys.argv[1:6]
max_tokens, seed = int(max_tokens), int(seed)
client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=60)
seen = {"client_version": openai.__version__}

models = client.models.list()
model = models.data[0].id
seen["models"] = [m.id for m in models.data]

messages = [{"role": "user", "content": question}]
whole = client.chat.completions.create(
    model=model, messages=messages, temperature=0, max_tokens=max_tokens
)
seen["whole"] = {
    "content": whole.choices[0].message.content,
    "role": whole.choices[0].message.role,
    "finish_reason": whole.choices[0].finish_reason,
    "usage": whole.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}),
    "object": whole.object,
}

stream = client.chat.completions.create(
    model=model,
    messages=messages,
    temperature=0,
    max_completion_tokens=max_tokens,
    stream=True,
    stream_options={"include_usage": True},
)
chunks = list(stream)
seen["stream"] = {
    "chunks": len(chunks),
    "first_role": chunks[0].choices[0].delta.role,
    "content": "".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
    "finish_reasons": [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason],
    "usage": chunks[-1].usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"})
    if chunks[-1].usage
    else None,
    "ids": sorted({c.id for c in chunks}),
}

sampled = client.chat.completions.create(
    model=model,
    messages=[{"role": "system", "content": system}] + messages,
    temperature=1,
    seed=seed,
    max_tokens=max_tokens,
)
seen["sampled"] = sampled.choices[0].message.content

scored = client.completions.create(
    model=model, prompt="The cat sat on the mat", max_tokens=0, echo=True, logprobs=2
)
lp = scored.choices[0].logprobs
seen["scored"] = {
    "text": scored.choices[0].text,
    "tokens": lp.tokens,
    "token_logprobs": lp.token_logprobs,
    "top_logprobs": lp.top_logprobs,
}

errors = {}
for name, call in {
    "temperature": lambda: client.chat.completions.create(
        model=model, messages=messages, temperature=-1
    ),
    "model": lambda: client.chat.completions.create(model="no-such-model", messages=messages),
    "max_tokens": lambda: client.chat.completions.create(
        model=model, messages=messages, max_tokens=0
    ),
}.items():
    try:
        call()
        errors[name] = None
    except openai.APIStatusError as e:
        body = e.body if isinstance(e.body, dict) else {}
        errors[name] = {"class": type(e).__name__, "status": e.status_code, "param": body.get("param"),
                        "message": body.get("message")}
seen["errors"] = errors
print(json.dumps(seen))
