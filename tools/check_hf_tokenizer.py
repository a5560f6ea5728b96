#!/usr/bin/env python3
"""Check a zerolm tokenizer directory and token files against Hugging Face `transformers`.

Optional: needs `pip install transformers tokenizers pyarrow` (no torch). zerolm itself never runs it.

  python tools/check_hf_tokenizer.py check --tokenizer runs/tokenizer --tokens runs/tokens \
      --sft data/sft.jsonl --dpo data/dpo.jsonl --pretrain data/pretrain.jsonl
      Loads the directory with AutoTokenizer and compares, row by row, the ids zerolm wrote with the ids
      `apply_chat_template` (SFT, DPO prompts) and `encode` (pretraining text) give.

  python tools/check_hf_tokenizer.py fixture --tokenizer tests/fixtures/tokenizer \
      --sft tests/fixtures/sft/conversations.jsonl --out tests/fixtures/hf_chat_template.json
      Writes the rendered text and ids HF gives for each conversation (with and without the generation
      prompt), which a Rust test compares with zerolm's rendering.
"""
import argparse
import json
import sys

import pyarrow.parquet as pq
from transformers import AutoTokenizer


def read_jsonl(path, limit=None):
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
                if limit and len(rows) >= limit:
                    break
    return rows


def conv(row):
    return row.get("conversations") or row.get("messages")


def check(args):
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    print(f"loaded {type(tok).__name__}: vocab {len(tok)}, eos {tok.eos_token!r}, pad {tok.pad_token!r}")
    failures = 0
    if args.pretrain:
        ids = pq.read_table(f"{args.tokens}/pretrain.parquet").column("input_ids").to_pylist()
        rows = read_jsonl(args.pretrain)
        bad = sum(tok.encode(r["text"], add_special_tokens=False) != i for r, i in zip(rows, ids))
        print(f"pretrain: {len(rows)} documents, {bad} differ from HF encode")
        failures += bad
    if args.sft:
        table = pq.read_table(f"{args.tokens}/sft.parquet")
        ids = table.column("input_ids").to_pylist()
        rows = read_jsonl(args.sft)
        bad = 0
        for r, i in zip(rows, ids):
            hf = tok.apply_chat_template(conv(r), tokenize=True, add_generation_prompt=False)
            hf = hf["input_ids"] if isinstance(hf, dict) or hasattr(hf, "keys") else hf
            bad += hf != i
        print(f"sft: {len(rows)} conversations, {bad} differ from HF apply_chat_template ids")
        failures += bad
    if args.dpo:
        table = pq.read_table(f"{args.tokens}/dpo.parquet")
        prompts = table.column("prompt_ids").to_pylist()
        chosen = table.column("chosen_ids").to_pylist()
        rows = read_jsonl(args.dpo)
        bad = 0
        for r, p, c in zip(rows, prompts, chosen):
            msgs = [{"role": "user", "content": r["prompt"]}]
            hf = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
            hf = hf["input_ids"] if hasattr(hf, "keys") else hf
            full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": r["chosen"]}], tokenize=False)
            want_c = tok.encode(full, add_special_tokens=False)[len(hf):]
            want_c = want_c[: want_c.index(tok.eos_token_id) + 1]
            bad += (hf != p) or (want_c != c)
        print(f"dpo: {len(rows)} pairs, {bad} prompt/chosen id lists differ from HF")
        failures += bad
    if failures:
        sys.exit(f"FAILED: {failures} rows differ")
    print("OK: zerolm's ids equal Hugging Face's")


def fixture(args):
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    out = []
    for r in read_jsonl(args.sft):
        messages = conv(r)
        for gen in (False, True):
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            ids = tok.encode(text, add_special_tokens=False)
            out.append({"messages": messages, "add_generation_prompt": gen, "text": text, "ids": ids,
                        "decoded": tok.decode(ids)})
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {len(out)} renderings to {args.out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check")
    c.add_argument("--tokenizer", required=True)
    c.add_argument("--tokens", required=True, help="directory with pretrain/sft/dpo.parquet")
    c.add_argument("--pretrain")
    c.add_argument("--sft")
    c.add_argument("--dpo", help="article-format DPO file the dpo.parquet was made from (first input)")
    f = sub.add_parser("fixture")
    f.add_argument("--tokenizer", required=True)
    f.add_argument("--sft", required=True)
    f.add_argument("--out", required=True)
    args = ap.parse_args()
    check(args) if args.cmd == "check" else fixture(args)


if __name__ == "__main__":
    main()
