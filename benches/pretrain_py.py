#!/usr/bin/env python3
"""PyTorch side of benches/pretrain.sh: the same model and the same training step as zerolm's
`pretrain` (forward over all positions + loss, backward, global grad-norm clip 1.0, AdamW with decay on
matrices only), timed the same way: tokens per second over the measured steps after warmup.

    python benches/pretrain_py.py --preset minimind2 --batch-size 4 --seq-len 256 --threads 2
"""
import argparse
import contextlib
import json
import resource
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

PRESETS = {
    "tiny": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2),
    "minimind2": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
                      num_key_value_heads=2),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="minimind2", choices=PRESETS)
    ap.add_argument("--vocab-size", type=int, default=6400)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    ap.add_argument("--forward-only", action="store_true", help="time logits + loss under no_grad")
    ap.add_argument("--autocast", action="store_true",
                    help='run forward (and backward) under torch.autocast(device, dtype=torch.bfloat16)')
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (compiled during warm-up)")
    ap.add_argument("--json", action="store_true", help="print one JSON line (for the `bench` binary)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    conf = LlamaConfig(vocab_size=a.vocab_size, rms_norm_eps=1e-5, max_position_embeddings=32768,
                       tie_word_embeddings=True, hidden_act="silu", attention_bias=False, mlp_bias=False,
                       rope_parameters={"rope_type": "default", "rope_theta": 1e6}, **PRESETS[a.preset])
    conf._attn_implementation = a.attn
    model = LlamaForCausalLM(conf).float().train().to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
    n_params = sum(p.numel() for p in params)
    g = torch.Generator().manual_seed(1)
    net = torch.compile(model) if a.compile else model
    amp = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if a.autocast else contextlib.nullcontext

    def step():
        ids = torch.randint(0, a.vocab_size, (a.batch_size, a.seq_len + 1), generator=g).to(dev)
        with amp():
            out = net(input_ids=ids[:, :-1])
            loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, a.vocab_size), ids[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    def forward():
        ids = torch.randint(0, a.vocab_size, (a.batch_size, a.seq_len + 1), generator=g).to(dev)
        with torch.no_grad(), amp():
            out = net(input_ids=ids[:, :-1])
            loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, a.vocab_size), ids[:, 1:].reshape(-1))
        return loss.item()

    run = forward if a.forward_only else step
    for _ in range(a.warmup):
        run()
    times = []
    for _ in range(a.steps):
        sync()
        t = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - t)
    dt = sum(times)
    tokens = a.steps * a.batch_size * a.seq_len
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if a.json:
        print(json.dumps({"step_s": times, "phases": [], "peak_rss_mb": rss,
                          "tokens_per_step": a.batch_size * a.seq_len}))
        return
    mode = ("compiled " if a.compile else "eager ") + ("bf16 autocast" if a.autocast else "f32")
    print(f"pytorch {torch.__version__} {mode} ({a.attn} attention): {a.preset} {n_params / 1e6:.2f}M params, "
          f"batch {a.batch_size}x{a.seq_len}, {a.threads} threads: {tokens / dt:.0f} tokens/s "
          f"({dt / a.steps:.2f} s/step over {a.steps} steps), peak RSS {rss:.0f} MB")


if __name__ == "__main__":
    main()
