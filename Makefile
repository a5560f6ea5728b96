# One target per step; each runs the same command line as tools/tokenize-shipped.sh.
# (The pipeline runner will generate these from pipelines/*.yaml once it exists.)
OUT ?= runs
STEP := OUT=$(OUT) tools/tokenize-shipped.sh
TOKEN_STEPS := pretrain pretrain-eval sft sft-eval dpo dpo-eval

.PHONY: all data tokenizer $(TOKEN_STEPS) test clean
all: $(TOKEN_STEPS)

data:
	cargo run --release --bin make-data -- shipped --out data

tokenizer:
	$(STEP) tokenizer

$(TOKEN_STEPS): tokenizer
	$(STEP) $@

test:
	cargo test --release --workspace

clean:
	rm -rf $(OUT)
