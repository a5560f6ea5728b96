#!/usr/bin/env python3
"""The Python baseline for `tokenize pretrain`: HF `tokenizers` (Rust, parallel encode_batch) + pyarrow.

Reads a JSONL `{"text"}` corpus, encodes it with the same tokenizer.json and writes the same Parquet
schema (input_ids: list<uint32>, zstd), streaming in batches. Prints MB/s and peak RSS.
Optional: needs `pip install tokenizers pyarrow`; zerolm never runs it itself.

  python benches/tokenize_py.py --tokenizer runs/tokenizer --input corpus.jsonl --out /tmp/py.parquet
"""
import argparse
import json
import os
import resource
import time

import pyarrow as pa
import pyarrow.parquet as pq
from tokenizers import Tokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, default=2048)
    args = ap.parse_args()
    tok = Tokenizer.from_file(os.path.join(args.tokenizer, "tokenizer.json"))
    schema = pa.schema([pa.field("input_ids", pa.list_(pa.uint32()), nullable=False)])
    start = time.time()
    rows = tokens = 0
    with open(args.input, encoding="utf-8") as f, pq.ParquetWriter(args.out, schema, compression="zstd") as w:
        batch = []

        def flush():
            nonlocal rows, tokens
            encs = tok.encode_batch(batch, add_special_tokens=False)
            ids = [e.ids for e in encs]
            rows += len(ids)
            tokens += sum(len(i) for i in ids)
            w.write_table(pa.table({"input_ids": pa.array(ids, type=pa.list_(pa.uint32()))}, schema=schema))
            batch.clear()

        for line in f:
            if line.strip():
                batch.append(json.loads(line)["text"])
                if len(batch) >= args.batch:
                    flush()
        if batch:
            flush()
    secs = time.time() - start
    mb = os.path.getsize(args.input) / 1e6
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"python tokenizers+pyarrow: {rows} rows, {tokens} tokens in {secs:.2f}s ({mb / secs:.1f} MB/s, peak RSS {rss:.0f} MB)")


if __name__ == "__main__":
    main()
