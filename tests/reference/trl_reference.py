#!/usr/bin/env python3
"""TRL reference for zerolm's `tokenize`, `sft` and `dpo` (optional; CI never runs it).

    pip install "trl==1.16.*" transformers torch tokenizers safetensors      # in a venv outside the repo
    cargo build --release
    python tests/reference/trl_reference.py fixtures --bin target/release --out tests/fixtures/trl

What it does, and commits under --out (the Rust tests `bins/dpo/tests/trl.rs` and `bins/sft/tests/trl.rs`
replay it):
  model/            a `micro` model zerolm pretrained for a few steps with the fixture tokenizer
  expected.json     TRL 1.16's token ids for dpo_conversational.jsonl, dpo_standard.jsonl (DPOTrainer's own
                    tokenization) and sft_messages.jsonl (SFTTrainer, assistant-only loss), and per run the
                    zerolm flags that mean the same and the per-step log TRL wrote: DPOTrainer once per loss
                    type and option (f-divergences, WPO weighting, LD-DPO, a weighted mix with the sft loss),
                    once on the standard (string) dataset, and SFTTrainer once.

Every run: all 8 rows in one batch, 10 steps, constant learning rate, no warmup, no weight decay, AdamW betas
(0.9, 0.999), eps 1e-8, gradient clipping at 1.0, fp32 on the CPU, the reference model = the starting model.

    # TRL's tokenization of any data, to compare with a zerolm token file
    python tests/reference/trl_reference.py tokenize --kind dpo --tokenizer runs/tokenizer \
        --input data/dpo.jsonl --chat --out /tmp/trl_dpo.json

    # seconds per DPOTrainer step, to set beside `dpo`'s on the same model and rows
    python tests/reference/trl_reference.py bench-dpo --model runs/sft/model --input data/dpo.jsonl

    # how many rows of a zerolm token file differ from that
    python tests/reference/trl_reference.py compare --kind dpo --tokenizer runs/tokenizer \
        --input data/dpo.jsonl --chat --tokens runs/tokens/dpo_only.parquet
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

STEPS = 10
BATCH = 8
LR = 5e-4
COMMON = dict(
    per_device_train_batch_size=BATCH, max_steps=STEPS, learning_rate=LR, lr_scheduler_type="constant",
    warmup_steps=0, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=1.0,
    logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, seed=0, bf16=False, fp16=False,
    dataloader_drop_last=False,
)

# TRL's training-template form of the fixture tokenizer's ChatML template: the same text, with the
# assistant turns (content, <|im_end|> and the newline) marked for `assistant_only_loss`.
CHATML_WITH_GENERATION = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}{% generation %}{{- message['content'] + '<|im_end|>\\n' }}{% endgeneration %}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# name: (dataset, DPOConfig fields, zerolm `dpo` flags)
DPO_RUNS = {
    "sigmoid": ("conversational", {}, []),
    "hinge": ("conversational", dict(loss_type=["hinge"]), ["--loss", "hinge"]),
    "ipo": ("conversational", dict(loss_type=["ipo"]), ["--loss", "ipo"]),
    "robust": ("conversational", dict(loss_type=["robust"], label_smoothing=0.1),
               ["--loss", "robust", "--label-smoothing", "0.1"]),
    "exo_pair": ("conversational", dict(loss_type=["exo_pair"], label_smoothing=1e-3),
                 ["--loss", "exo_pair", "--label-smoothing", "0.001"]),
    "nca_pair": ("conversational", dict(loss_type=["nca_pair"]), ["--loss", "nca_pair"]),
    "bco_pair": ("conversational", dict(loss_type=["bco_pair"]), ["--loss", "bco_pair"]),
    "sppo_hard": ("conversational", dict(loss_type=["sppo_hard"]), ["--loss", "sppo_hard"]),
    "aot": ("conversational", dict(loss_type=["aot"], label_smoothing=0.1),
            ["--loss", "aot", "--label-smoothing", "0.1"]),
    "aot_unpaired": ("conversational", dict(loss_type=["aot_unpaired"], label_smoothing=0.1),
                     ["--loss", "aot_unpaired", "--label-smoothing", "0.1"]),
    "apo_zero": ("conversational", dict(loss_type=["apo_zero"]), ["--loss", "apo_zero"]),
    "apo_down": ("conversational", dict(loss_type=["apo_down"]), ["--loss", "apo_down"]),
    "discopop": ("conversational", dict(loss_type=["discopop"]), ["--loss", "discopop"]),
    "sigmoid_norm": ("conversational", dict(loss_type=["sigmoid_norm"]), ["--loss", "sigmoid_norm"]),
    "sigmoid+sft": ("conversational", dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5]),
                    ["--loss", "sigmoid:1,sft:0.5"]),
    "forward_kl": ("conversational", dict(f_divergence_type="forward_kl"), ["--f-divergence-type", "forward_kl"]),
    "js_divergence": ("conversational", dict(f_divergence_type="js_divergence"),
                      ["--f-divergence-type", "js_divergence"]),
    "alpha_divergence": ("conversational", dict(f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.3),
                         ["--f-divergence-type", "alpha_divergence", "--f-alpha-divergence-coef", "0.3"]),
    "use_weighting": ("conversational", dict(use_weighting=True), ["--use-weighting"]),
    "ld_alpha": ("conversational", dict(ld_alpha=0.5), ["--ld-alpha", "0.5"]),
    "standard": ("standard", {}, []),
}

DATA = {
    "conversational": "dpo_conversational.jsonl",
    "standard": "dpo_standard.jsonl",
    "sft": "sft_messages.jsonl",
}


def rows(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def make_model(bin_dir, out_dir, fixtures):
    """A micro model pretrained by zerolm for 20 steps on the fixture documents and conversations' text."""
    work = tempfile.mkdtemp()
    docs = os.path.join(work, "docs.jsonl")
    with open(docs, "w", encoding="utf-8") as f:
        for r in rows(os.path.join(out_dir, DATA["sft"])):
            f.write(json.dumps({"text": " ".join(m["content"] for m in r["messages"])}, ensure_ascii=False) + "\n")
    tok = os.path.join(fixtures, "tokenizer")
    tokens = os.path.join(work, "docs.parquet")
    run([os.path.join(bin_dir, "tokenize"), "pretrain", "--tokenizer", tok, "--input", docs, "--out", tokens])
    run([os.path.join(bin_dir, "pretrain"), "--preset", "micro", "--tokenizer", tok, "--input", tokens,
         "--out", os.path.join(work, "pre"), "--max-steps", "20", "--batch-size", "4", "--max-len", "32", "--lr", "1e-2",
         "--threads", "2", "--no-progress"])
    dest = os.path.join(out_dir, "model")
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(os.path.join(work, "pre", "model"), dest)
    shutil.rmtree(work)
    return dest


def run(cmd):
    print("+", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True)


def load(model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(model_dir)


def history(trainer):
    keep = lambda k: k not in ("epoch", "step", "total_flos", "train_runtime") and not k.startswith("train_")
    return [{k: v for k, v in h.items() if keep(k)} for h in trainer.state.log_history if "loss" in h]


def dpo_run(model_dir, data_path, fields, work):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer
    model, tok = load(model_dir)
    cfg = DPOConfig(output_dir=work, **COMMON, **fields)
    trainer = DPOTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows(data_path)),
                         processing_class=tok)
    trainer.train()
    ids = [{k: list(map(int, r[k])) for k in ("prompt_ids", "chosen_ids", "rejected_ids")}
           for r in trainer.train_dataset]
    return history(trainer), ids


def sft_run(model_dir, data_path, work):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer
    model, tok = load(model_dir)
    tok.chat_template = CHATML_WITH_GENERATION
    cfg = SFTConfig(output_dir=work, **COMMON, assistant_only_loss=True, max_length=None, packing=False)
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows(data_path)),
                         processing_class=tok)
    trainer.train()
    ids = [{"input_ids": list(map(int, r["input_ids"])), "loss_mask": [int(l != -100) for l in r["labels"]]}
           for r in trainer.train_dataset]
    return history(trainer), ids


def fixtures(args):
    import trl
    out = args.out
    repo_fixtures = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")
    model_dir = make_model(args.bin, out, repo_fixtures)
    expected = {"trl": trl.__version__, "steps": STEPS, "batch": BATCH, "lr": LR, "tokens": {}, "dpo": {}}
    with tempfile.TemporaryDirectory() as work:
        for name, (dataset, fields, flags) in DPO_RUNS.items():
            print(f"== dpo {name}", file=sys.stderr)
            steps, ids = dpo_run(model_dir, os.path.join(out, DATA[dataset]), fields, work)
            expected["tokens"].setdefault(dataset, ids)
            assert expected["tokens"][dataset] == ids, f"{name}: TRL tokenized {dataset} differently"
            expected["dpo"][name] = {"dataset": dataset, "flags": flags, "steps": steps}
        print("== sft", file=sys.stderr)
        steps, ids = sft_run(model_dir, os.path.join(out, DATA["sft"]), work)
        expected["tokens"]["sft"] = ids
        expected["sft"] = {"flags": [], "steps": steps}
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
    print(f"wrote {out}/expected.json and {model_dir}", file=sys.stderr)


def tokenize(args):
    """TRL's token ids of --input (DPO: DPOTrainer's; SFT: SFTTrainer's with assistant-only loss)."""
    from transformers import AutoTokenizer
    from trl.trainer.dpo_trainer import DPOTrainer
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    data = rows(args.input)
    if args.kind == "dpo":
        if args.chat:
            data = [as_conversational(r) for r in data]
        out = [trl_dpo_ids(tok, r) for r in data]
    else:
        tok.chat_template = CHATML_WITH_GENERATION
        out = []
        for r in data:
            msgs = r.get("messages") or r.get("conversations")
            enc = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
            out.append({"input_ids": enc["input_ids"], "loss_mask": enc["assistant_masks"]})
    with open(args.out, "w") as f:
        json.dump(out, f)
    print(f"{len(out)} rows -> {args.out}", file=sys.stderr)


def bench_dpo(args):
    """Seconds per DPOTrainer step on this machine (CPU, --threads), with precomputed reference log-probs,
    to set beside `dpo`'s own s/step on the same model and rows."""
    import time
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer
    torch.set_num_threads(args.threads)
    data = [as_conversational(r) for r in rows(args.input)][: args.batch * args.steps]
    model, tok = load(args.model)
    stamps = []

    class Clock(TrainerCallback):
        def on_step_end(self, *_, **__):
            stamps.append(time.perf_counter())

    cfg = DPOConfig(output_dir=tempfile.mkdtemp(), **{**COMMON, "max_steps": args.steps,
                    "per_device_train_batch_size": args.batch, "learning_rate": 1e-4, "logging_steps": 10},
                    loss_type=["sigmoid", "sft"], loss_weights=[1.0, 1.0], precompute_ref_log_probs=True)
    trainer = DPOTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(data), processing_class=tok,
                         callbacks=[Clock()])
    trainer.train()
    per_step = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    print(f"TRL {trl_version()} DPOTrainer: {per_step:.4f} s/step over {len(stamps) - 1} steps "
          f"(batch {args.batch} pairs, {args.threads} threads)")


def trl_version():
    import trl
    return trl.__version__


def compare(args):
    """How many rows of a zerolm token file differ from TRL's tokenization of the same input."""
    import pyarrow.parquet as pq
    tokenize(args)
    with open(args.out) as f:
        trl_rows = json.load(f)
    table = pq.read_table(args.tokens).to_pylist()
    cols = ("prompt_ids", "chosen_ids", "rejected_ids") if args.kind == "dpo" else ("input_ids", "loss_mask")
    ours = [{c: list(r[c]) for c in cols} for r in table]
    if len(ours) != len(trl_rows):
        print(f"{args.tokens}: {len(ours)} rows, TRL {len(trl_rows)}")
        return
    differ = [i for i, (a, b) in enumerate(zip(ours, trl_rows)) if a != {c: list(b[c]) for c in cols}]
    print(f"{args.tokens}: {len(differ)} of {len(ours)} rows differ from TRL's token ids"
          + (f" (first: row {differ[0]})" if differ else ""))


def as_conversational(r):
    """A string pair as TRL's conversational format (what zerolm's default `--template chat` renders)."""
    if not isinstance(r.get("prompt"), str):
        return r
    return {"prompt": [{"role": "user", "content": r["prompt"]}],
            "chosen": [{"role": "assistant", "content": r["chosen"]}],
            "rejected": [{"role": "assistant", "content": r["rejected"]}]}


def trl_dpo_ids(tok, example):
    """DPOTrainer._prepare_dataset's tokenization of one row (prompt extraction, eos, common prefix)."""
    from trl.data_utils import extract_prompt, is_conversational
    if "prompt" not in example:
        example = extract_prompt(example)
    if is_conversational(example):
        render = lambda msgs, gen: tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen,
                                                           return_dict=True)["input_ids"]
        prompt = render(example["prompt"], True)
        full_c = render(example["prompt"] + example["chosen"], False)
        full_r = render(example["prompt"] + example["rejected"], False)
    else:
        eos = tok.eos_token
        c = example["chosen"] if example["chosen"].endswith(eos) else example["chosen"] + eos
        r = example["rejected"] if example["rejected"].endswith(eos) else example["rejected"] + eos
        enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]
        prompt, full_c, full_r = enc(example["prompt"]), enc(example["prompt"] + c), enc(example["prompt"] + r)
    common = lambda a, b: next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    n = min(common(prompt, full_c), common(prompt, full_r))
    return {"prompt_ids": prompt[:n], "chosen_ids": full_c[n:], "rejected_ids": full_r[n:]}


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fixtures")
    f.add_argument("--bin", default="target/release")
    f.add_argument("--out", default="tests/fixtures/trl")
    t = sub.add_parser("tokenize")
    t.add_argument("--kind", choices=["dpo", "sft"], required=True)
    t.add_argument("--tokenizer", required=True)
    t.add_argument("--input", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--chat", action="store_true", help="DPO: string pairs as conversational (zerolm's default)")
    c = sub.add_parser("compare")
    for a in ("--kind", "--tokenizer", "--input", "--tokens"):
        c.add_argument(a, required=True)
    c.add_argument("--out", default="/tmp/trl_tokens.json")
    c.add_argument("--chat", action="store_true")
    b = sub.add_parser("bench-dpo")
    b.add_argument("--model", required=True)
    b.add_argument("--input", required=True)
    b.add_argument("--steps", type=int, default=41)
    b.add_argument("--batch", type=int, default=8)
    b.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    {"fixtures": fixtures, "tokenize": tokenize, "compare": compare, "bench-dpo": bench_dpo}[args.cmd](args)


if __name__ == "__main__":
    main()
