# `make` runs the main job through the pipeline runner (cached, resumable). `make STAGE` runs one stage of
# pipelines/full.yaml with the same command line the pipeline runs — tokenizer, tok-pretrain, tok-sft,
# pretrain, sft, ref-train, ref-eval, dpo, report, … (targets generated into Makefile.stages).
.DEFAULT_GOAL := all
BIN ?= $(CURDIR)/target/release
STAGE_PREREQS := build
include Makefile.stages

.PHONY: all build status dag report test bench data clean stages-makefile
all: build
	$(BIN)/pipeline run pipelines/full.yaml

build:
	cargo build --release

status: build
	$(BIN)/pipeline status pipelines/full.yaml

dag: build
	$(BIN)/pipeline dag pipelines/full.yaml

test:
	cargo test --release --workspace

bench:
	benches/pretrain.sh

data:
	cargo run --release --bin make-data -- shipped --out data

# Regenerate Makefile.stages after editing pipelines/full.yaml (a test checks they agree).
stages-makefile: build
	$(BIN)/pipeline makefile pipelines/full.yaml --bin '$$(CURDIR)/target/release' > Makefile.stages.tmp
	mv Makefile.stages.tmp Makefile.stages

clean:
	rm -rf runs
