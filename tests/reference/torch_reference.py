#!/usr/bin/env python3
"""PyTorch / transformers reference for zerolm's model and optimizer (optional; CI never runs it).

    pip install torch transformers safetensors      # in a venv outside the repo

    # regenerate the committed fixtures the Rust tests compare against
    python tests/reference/torch_reference.py fixtures --out tests/fixtures/model

    # the same model under torch.autocast("cpu", dtype=torch.bfloat16), for zerolm's --precision bf16
    python tests/reference/torch_reference.py autocast-fixtures --out tests/fixtures/model

    # check an exported model directory loads in transformers and gives zerolm's logits
    cargo build --release -p zerolm-generate
    python tests/reference/torch_reference.py check-export --model runs/pretrain/model \
        --generate target/release/generate --prompt "Alice lives in"

Fixtures per architecture (llama: untied head, theta 1e4; qwen3: tied, q/k norm, head_dim ≠ hidden/heads):
  config.json          zerolm ModelConfig (HF field names)
  init.safetensors     the initial weights transformers drew (seed 0), HF names
  expected.safetensors ids (two batches [2, 16], int64), logits of batch 0 [2, 16, vocab]
  expected.json        loss of batch 0, every parameter's gradient L2 norm, the total grad norm, and the
                       loss before each of 10 AdamW steps (lr 3e-3, betas 0.9/0.95, eps 1e-8, weight decay
                       0.1 on matrices only, global grad-norm clip 1.0, batches alternating 0, 1, 0, …)
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file, save_file

VOCAB = 320
SEQ = 16
BATCH = 2
STEPS = 10
OPT = dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, clip=1.0)

SHAPES = {
    "llama": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=VOCAB,
                  rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=128,
                  tie_word_embeddings=False, initializer_range=0.02,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0),
    "qwen3": dict(model_type="qwen3", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=24, vocab_size=VOCAB,
                  rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=128,
                  tie_word_embeddings=True, initializer_range=0.02,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0),
}


def build(arch, cfg):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM
    kw = {k: v for k, v in cfg.items() if k != "model_type"}
    kw["rope_parameters"] = {"rope_type": "default", "rope_theta": cfg["rope_theta"]}
    if arch == "llama":
        conf = LlamaConfig(**kw, attention_bias=False, mlp_bias=False, hidden_act="silu")
        cls = LlamaForCausalLM
    else:
        conf = Qwen3Config(**kw, attention_bias=False, use_sliding_window=False, hidden_act="silu")
        cls = Qwen3ForCausalLM
    conf._attn_implementation = "eager"
    torch.manual_seed(0)
    model = cls(conf).float()
    inv = model.model.rotary_emb.inv_freq
    want = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, cfg["head_dim"], 2).float() / cfg["head_dim"]))
    assert torch.allclose(inv, want), "transformers did not take rope_theta"
    return model


def named_params(model, cfg):
    out = {}
    for name, p in model.named_parameters():
        out[name] = p
    if cfg["tie_word_embeddings"]:
        out.pop("lm_head.weight", None)
    return out


def fixtures(out_dir):
    torch.set_num_threads(1)
    for arch, cfg in SHAPES.items():
        d = os.path.join(out_dir, arch)
        os.makedirs(d, exist_ok=True)
        model = build(arch, cfg)
        params = named_params(model, cfg)
        save_file({k: v.detach().contiguous() for k, v in params.items()}, os.path.join(d, "init.safetensors"),
                  metadata={"format": "pt"})
        g = torch.Generator().manual_seed(1)
        batches = [torch.randint(0, VOCAB, (BATCH, SEQ), generator=g) for _ in range(2)]
        logits, run = measure(model, params, batches, autocast=False)
        loss, total, curve = run["loss0"], run["total_grad_norm"], run["loss_curve"]
        save_file({"ids0": batches[0], "ids1": batches[1], "logits0": logits.contiguous()},
                  os.path.join(d, "expected.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f, indent=1)
        with open(os.path.join(d, "expected.json"), "w") as f:
            json.dump({"torch": torch.__version__, "optimizer": OPT, **run}, f, indent=1)
        print(f"{arch}: loss {loss:.6f}, total grad norm {total:.6f}, "
              f"loss after 10 steps {curve[-1]:.6f} -> {d}")


def measure(model, params, batches, autocast):
    """Logits and loss of batch 0, gradient norms, then the 10-step AdamW curve, optionally under bf16 autocast."""
    def fwd(ids, **kw):
        if autocast:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model(input_ids=ids, **kw)
        return model(input_ids=ids, **kw)
    logits = fwd(batches[0]).logits.detach().float()
    loss = fwd(batches[0], labels=batches[0]).loss
    loss.backward()
    grad_norms = {k: p.grad.norm().item() for k, p in params.items()}
    total = torch.sqrt(sum(p.grad.pow(2).sum() for p in params.values())).item()
    model.zero_grad(set_to_none=True)
    decay = [p for k, p in params.items() if p.dim() >= 2]
    no_decay = [p for k, p in params.items() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": OPT["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=OPT["lr"], betas=OPT["betas"], eps=OPT["eps"])
    curve, norms = [], []
    for step in range(STEPS):
        l = fwd(batches[step % 2], labels=batches[step % 2]).loss
        l.backward()
        n = torch.nn.utils.clip_grad_norm_(list(params.values()), OPT["clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        curve.append(l.item())
        norms.append(n.item())
    return logits, dict(loss0=loss.item(), grad_norms=grad_norms, total_grad_norm=total, loss_curve=curve,
                        grad_norm_curve=norms)


def autocast_fixtures(out_dir):
    """bf16 autocast runs of each architecture from the committed init, with the f32 run's distance to them."""
    torch.set_num_threads(1)
    for arch, cfg in SHAPES.items():
        d = os.path.join(out_dir, arch)
        init = load_file(os.path.join(d, "init.safetensors"))
        ids = load_file(os.path.join(d, "expected.safetensors"))
        batches = [ids["ids0"], ids["ids1"]]
        runs = {}
        for mode in ("f32", "autocast"):
            model = build(arch, cfg)
            params = named_params(model, cfg)
            with torch.no_grad():
                for k, p in params.items():
                    p.copy_(init[k])
            runs[mode] = measure(model, params, batches, mode == "autocast")
        (l32, f32), (l16, bf) = runs["f32"], runs["autocast"]
        save_file({"logits0": l16.contiguous()}, os.path.join(d, "autocast.safetensors"), metadata={"format": "pt"})
        bf["torch"] = torch.__version__
        bf["optimizer"] = OPT
        # How far autocast itself is from f32: the scale the Rust test measures zerolm's bf16 against.
        bf["f32_distance"] = dict(
            logits=(l16 - l32).abs().max().item(),
            loss0=abs(bf["loss0"] - f32["loss0"]),
            grad_norms_rel=max(abs(bf["grad_norms"][k] - f32["grad_norms"][k]) / f32["grad_norms"][k]
                               for k in f32["grad_norms"]),
            loss_curve=max(abs(a - b) for a, b in zip(bf["loss_curve"], f32["loss_curve"])),
        )
        with open(os.path.join(d, "autocast.json"), "w") as f:
            json.dump(bf, f, indent=1)
        print(f"{arch}: autocast loss {bf['loss0']:.6f} (f32 {f32['loss0']:.6f}); distance to f32 {bf['f32_distance']}")


def check_export(model_dir, generate, prompt):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                 attn_implementation="eager")
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        ref = model(input_ids=ids).logits[0]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "logits.safetensors")
        subprocess.run([generate, "--model", model_dir, "--prompt", prompt, "--logits-out", path],
                       check=True, stdout=subprocess.DEVNULL)
        ours = load_file(path)
    assert ours["ids"].tolist() == ids[0].tolist(), f"token ids differ: {ours['ids'].tolist()} vs {ids[0].tolist()}"
    diff = (ours["logits"] - ref).abs().max().item()
    scale = ref.abs().max().item()
    print(f"{type(model).__name__} loaded from {model_dir}: {ids.shape[1]} tokens, "
          f"max |Δlogit| = {diff:.3e} (max |logit| {scale:.3f}), rel {diff / scale:.3e}")
    if diff > 1e-4 * max(1.0, scale):
        sys.exit("logits differ beyond 1e-4 relative")
    print("OK: transformers and zerolm agree")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fixtures")
    f.add_argument("--out", default="tests/fixtures/model")
    a = sub.add_parser("autocast-fixtures")
    a.add_argument("--out", default="tests/fixtures/model")
    c = sub.add_parser("check-export")
    c.add_argument("--model", required=True)
    c.add_argument("--generate", default="target/release/generate")
    c.add_argument("--prompt", default="Alice lives in")
    a = ap.parse_args()
    if a.cmd == "fixtures":
        fixtures(a.out)
    elif a.cmd == "autocast-fixtures":
        autocast_fixtures(a.out)
    else:
        check_export(a.model, a.generate, a.prompt)


if __name__ == "__main__":
    main()
