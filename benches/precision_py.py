#!/usr/bin/env python3
"""PyTorch's own f32-versus-bf16-autocast difference on zerolm's pretraining recipe (optional; CI never
runs it). It answers: does bf16 mixed precision, as PyTorch defines it, cost anything on this recipe?

    python benches/precision_py.py --config runs/pretrain/resolved_config.json \
        --train runs/tokens/pretrain.parquet --eval runs/tokens/pretrain_eval.parquet --seeds 42 43 44

It reads the recipe from a zerolm `pretrain` run's resolved_config.json (model shape, lr, warmup, cosine
floor, AdamW betas/eps/weight decay, clip, batch, seq_len, epochs) and packs the token files as `pretrain`
does (documents joined with eos, blocks of seq_len + 1 overlapping by one, shuffled each epoch), then
trains transformers' LlamaForCausalLM from its own initialisation once in f32 and once under
torch.autocast("cpu", dtype=torch.bfloat16) per seed, and prints the held-out loss of each (the mean
next-token cross-entropy over every eval block, like `pretrain`'s eval loss) as one JSON line per run.
"""
import argparse
import contextlib
import json
import math
import time

import pyarrow.parquet as pq
import torch


def blocks(path, eos, seq_len):
    ids = []
    for doc in pq.read_table(path, columns=["input_ids"]).column("input_ids").to_pylist():
        ids.extend(doc)
        ids.append(eos)
    n = (len(ids) - 1) // seq_len
    t = torch.tensor(ids[: n * seq_len + 1], dtype=torch.long)
    return torch.stack([t[i * seq_len: i * seq_len + seq_len + 1] for i in range(n)])


def lr_at(step, c, total):
    """zerolm's schedule: linear warmup to the peak, then cosine down to min_lr_ratio of it."""
    if step <= c["warmup_steps"]:
        return c["lr"] * step / c["warmup_steps"]
    progress = (step - c["warmup_steps"]) / max(1, total - c["warmup_steps"])
    floor = c["min_lr_ratio"]
    return c["lr"] * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def build(m, seed):
    from transformers import LlamaConfig, LlamaForCausalLM
    conf = LlamaConfig(vocab_size=m["vocab_size"], hidden_size=m["hidden_size"],
                       intermediate_size=m["intermediate_size"], num_hidden_layers=m["num_hidden_layers"],
                       num_attention_heads=m["num_attention_heads"], num_key_value_heads=m["num_key_value_heads"],
                       rms_norm_eps=m["rms_norm_eps"], max_position_embeddings=m["max_position_embeddings"],
                       tie_word_embeddings=m["tie_word_embeddings"], initializer_range=m["initializer_range"],
                       rope_parameters={"rope_type": "default", "rope_theta": m["rope_theta"]},
                       attention_bias=False, mlp_bias=False, hidden_act="silu")
    conf._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    return LlamaForCausalLM(conf).float()


def loss_of(model, batch, amp):
    with amp():
        logits = model(input_ids=batch[:, :-1]).logits
    return torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))


def run(c, train, evals, seed, bf16):
    amp = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    model = build(c["model"], seed).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": c["weight_decay"]},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                            lr=c["lr"], betas=(c["beta1"], c["beta2"]), eps=c["eps"])
    bs = c["batch_size"]
    per_epoch = len(train) // bs  # a last partial batch is left out, as `pretrain` does
    total = per_epoch * c["epochs"]
    g = torch.Generator().manual_seed(seed)
    step, t0 = 0, time.time()
    for _ in range(c["epochs"]):
        order = torch.randperm(len(train), generator=g)
        for i in range(per_epoch):
            step += 1
            for group in opt.param_groups:
                group["lr"] = lr_at(step, c, total)
            loss = loss_of(model, train[order[i * bs:(i + 1) * bs]], amp)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, c["grad_clip"])
            opt.step()
            opt.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        s = sum(loss_of(model, evals[i:i + 16], amp).item() * len(evals[i:i + 16]) for i in range(0, len(evals), 16))
    return dict(seed=seed, precision="bf16 autocast" if bf16 else "f32", steps=step,
                eval_loss=s / len(evals), seconds=round(time.time() - t0, 1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="a zerolm pretrain run's resolved_config.json")
    ap.add_argument("--train", required=True)
    ap.add_argument("--eval", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[42])
    ap.add_argument("--precisions", nargs="+", default=["f32", "bf16"], choices=["f32", "bf16"])
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    c = json.load(open(a.config))["config"]
    eos = c["model"]["eos_token_id"]
    train, evals = blocks(a.train, eos, c["seq_len"]), blocks(a.eval, eos, c["seq_len"])
    for seed in a.seeds:
        for p in a.precisions:
            print(json.dumps({"torch": torch.__version__, **run(c, train, evals, seed, p == "bf16")}), flush=True)


if __name__ == "__main__":
    main()
