"""An exported GGUF file in llama.cpp itself (through llama-cpp-python) and read back by the `gguf`
package: the logits of given token ids at every position, greedy decoding from them, llama.cpp's own
tokenization of a text, the file's chat template as llama-cpp-python renders it with the greedy answer's
ids, and every metadata key.
Prints one JSON object; the Rust test (bins/export/tests/gguf.rs) judges it.

usage: python llama_check.py MODEL.gguf REQUEST.json
REQUEST: {"ids": [...], "greedy": N, "text": "...", "chat": "question", "chat_tokens": N}
"""
import json
import sys

import gguf
import llama_cpp
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

path, request = sys.argv[1], json.load(open(sys.argv[2]))
seen = {"llama_cpp_version": llama_cpp.__version__}

reader = gguf.GGUFReader(path)
fields = {}
for name, field in reader.fields.items():
    if name.startswith("GGUF."):
        continue
    value = field.contents()
    if isinstance(value, list) and len(value) > 8:
        value = {"len": len(value), "first": value[:3]}
    fields[name] = value
seen["fields"] = fields
seen["tensors"] = {t.name: [int(d) for d in t.shape] for t in reader.tensors}
seen["tensor_types"] = sorted({t.tensor_type.name for t in reader.tensors})

llm = llama_cpp.Llama(
    model_path=path, n_ctx=256, logits_all=True, verbose=False, n_threads=2, seed=0
)
ids = request["ids"]
llm.eval(ids)
seen["logits"] = llm.scores[: len(ids)].tolist()
greedy = []
for token in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
    if len(greedy) == request["greedy"]:
        break
    greedy.append(int(token))
seen["greedy"] = greedy
seen["tokenized"] = llm.tokenize(request["text"].encode(), add_bos=False, special=True)
# The chat prompt as llama-cpp-python renders the file's template, and the greedy answer's ids.
template = llm.metadata["tokenizer.chat_template"]
eos = llm.detokenize([llm.token_eos()], special=True).decode()
formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token="")
prompt = formatter(messages=[{"role": "user", "content": request["chat"]}]).prompt
seen["chat_prompt"] = prompt
answer = []
chat_ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
for token in llm.generate(chat_ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
    answer.append(int(token))
    if token == llm.token_eos() or len(answer) == request["chat_tokens"]:
        break
seen["chat_ids"] = answer
print(json.dumps(seen))
