"""Loads a half-precision export (`export --format safetensors --dtype bf16|f16 --out DIR`) in
transformers beside its f32 source, prints the logits' largest relative difference and the greedy chat
answer of the half model. Needs torch + transformers (the reference venv; CI does not run this).

usage: python check_export_hf.py HALF_DIR F32_DIR "question"
"""
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

half_dir, f32_dir, question = sys.argv[1:4]
half = AutoModelForCausalLM.from_pretrained(half_dir)
full = AutoModelForCausalLM.from_pretrained(f32_dir, dtype=torch.float32)
tok = AutoTokenizer.from_pretrained(half_dir)
ids = tok(question, return_tensors="pt").input_ids
with torch.no_grad():
    a, b = full(ids).logits, half(ids).logits.float()
print("half dtype:", half.dtype)
print("logits max |difference| / max |f32 logit|:", ((a - b).abs().max() / a.abs().max()).item())
prompt = tok.apply_chat_template(
    [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt"
)
prompt = prompt if isinstance(prompt, torch.Tensor) else prompt["input_ids"]
out = half.generate(prompt, max_new_tokens=24, do_sample=False)
print("greedy answer:", repr(tok.decode(out[0][prompt.shape[1]:], skip_special_tokens=True)))
