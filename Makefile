# One target per step; each runs the same command line as tools/run-shipped.sh.
# (The pipeline runner will generate these from pipelines/*.yaml once it exists.)
OUT ?= runs
STEP := OUT=$(OUT) tools/run-shipped.sh
TOKEN_STEPS := tok-pretrain tok-pretrain-eval tok-sft tok-sft-eval tok-dpo tok-dpo-eval

.PHONY: all data tokenizer $(TOKEN_STEPS) pretrain sft ref dpo sample test bench clean
all: sample

data:
	cargo run --release --bin make-data -- shipped --out data

tokenizer:
	$(STEP) tokenizer

$(TOKEN_STEPS): tokenizer
	$(STEP) $@

pretrain: tok-pretrain tok-pretrain-eval
	$(STEP) pretrain

sft: pretrain tok-sft tok-sft-eval
	$(STEP) sft

ref: sft tok-dpo tok-dpo-eval
	$(STEP) ref

dpo: ref
	$(STEP) dpo

sample: dpo
	$(STEP) sample

test:
	cargo test --release --workspace

bench:
	benches/pretrain.sh

clean:
	rm -rf $(OUT)
