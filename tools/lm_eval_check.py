"""Cross-checks `eval` with lm-evaluation-harness on the shipped eval sets.

`harness` runs the harness (its `hf` backend, float32, CPU) on a Hugging Face model directory with the
task YAMLs of tools/lm-eval/ (the three multiple-choice sets and the held-out pretraining text), and with
the harness's own `hellaswag` definition and C-Eval template (`_default_ceval_yaml`) pointed at the small HellaSwag-format
and C-Eval-format files of tests/fixtures/lm_eval/, and writes what it computed: every choice's
log-likelihood, every document's rolling log-likelihood and the aggregate metrics. `compare` sets that beside `eval --samples` output of the same model.
A zerolm model directory is a Hugging Face directory as it is; `export --format safetensors` writes
one too.

Needs lm-eval (`pip install lm-eval`, which brings torch and transformers); zerolm's build and tests
do not: tests/fixtures/lm_eval/ holds this script's output for the committed micro model, and
bins/eval/tests/lm_eval.rs replays it.

usage:
  python tools/lm_eval_check.py harness MODEL_DIR OUT.json
  python tools/lm_eval_check.py compare HARNESS.json SAMPLES.jsonl
"""
import json
import math
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# harness task → (zerolm task name, kind)
TASKS = {
    "zerolm_facts_mc_en": ("facts_mc_en", "mc"),
    "zerolm_facts_mc_zh": ("facts_mc_zh", "mc"),
    "zerolm_sums_mc": ("sums_mc", "mc"),
    "zerolm_pretrain_eval": ("pretrain_eval", "ppl"),
    "zerolm_hellaswag": ("hellaswag", "mc"),
    "zerolm_ceval": ("ceval", "mc"),
}
FIXTURES = REPO / "tests" / "fixtures" / "lm_eval"


def harness_format_tasks():
    """The harness's own HellaSwag and C-Eval definitions (prompt, choices, document preparation) on the
    fixture files instead of the datasets they name."""
    import lm_eval
    from lm_eval.tasks._yaml_loader import load_yaml

    tasks_dir = Path(lm_eval.__file__).parent / "tasks"
    hellaswag = load_yaml(tasks_dir / "hellaswag" / "hellaswag.yaml")
    ceval = load_yaml(tasks_dir / "ceval" / "_default_ceval_yaml")
    for cfg in (hellaswag, ceval):
        for key in ("tag", "training_split", "validation_split", "fewshot_split", "fewshot_config", "dataset_name"):
            cfg.pop(key, None)
    hellaswag.update(task="zerolm_hellaswag", dataset_path="json", test_split="test",
                     dataset_kwargs={"data_files": {"test": str(FIXTURES / "hellaswag.jsonl")}})
    ceval.update(task="zerolm_ceval", dataset_path="csv", test_split="test",
                 dataset_kwargs={"data_files": {"test": str(FIXTURES / "ceval.csv")}})
    return [hellaswag, ceval]


def harness(model_dir, out):
    import lm_eval
    from lm_eval.tasks import TaskManager

    model_dir = Path(model_dir).resolve()
    os.chdir(REPO)  # the task YAMLs name the data files relative to the repository root
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={model_dir},dtype=float32",
        tasks=[t for t in TASKS if t not in ("zerolm_hellaswag", "zerolm_ceval")] + harness_format_tasks(),
        task_manager=TaskManager(include_path=str(REPO / "tools" / "lm-eval")),
        device="cpu",
        batch_size=16,
        log_samples=True,
    )
    fixture = {"lm_eval_version": lm_eval.__version__, "model": model_dir.name, "tasks": {}}
    for name, (task, kind) in TASKS.items():
        metrics = {k.split(",")[0]: v for k, v in results["results"][name].items() if "," in k}
        samples = sorted(results["samples"][name], key=lambda s: s["doc_id"])
        if kind == "mc":
            items = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
        else:
            items = [float(s["filtered_resps"][0]) for s in samples]
        fixture["tasks"][task] = {"kind": kind, "metrics": metrics, "logliks": items}
    Path(out).write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n")
    for task, t in fixture["tasks"].items():
        shown = {k: round(v, 6) for k, v in t["metrics"].items() if isinstance(v, float)}
        print(task, shown)


def argmax(values):
    return max(range(len(values)), key=lambda i: (values[i], -i))


def compare(harness_json, samples_jsonl):
    want = json.loads(Path(harness_json).read_text())["tasks"]
    got = {}
    for line in Path(samples_jsonl).read_text().splitlines():
        s = json.loads(line)
        got.setdefault(s["task"], []).append(s)
    for task, w in want.items():
        g = got[task]
        assert len(g) == len(w["logliks"]), f"{task}: {len(g)} items vs the harness's {len(w['logliks'])}"
        if w["kind"] == "mc":
            diffs = [abs(a - b) for s, h in zip(g, w["logliks"]) for a, b in zip(s["lls"], h)]
            same_pred = sum(s["pred"] == argmax(h) for s, h in zip(g, w["logliks"]))
            acc = sum(s["acc"] for s in g) / len(g)
            acc_norm = sum(s["acc_norm"] for s in g) / len(g)
            print(f"{task}: max |log-likelihood difference| {max(diffs):.2e} over {len(diffs)} choices; "
                  f"same prediction {same_pred}/{len(g)}; acc {acc:.4f} vs {w['metrics']['acc']:.4f}, "
                  f"acc_norm {acc_norm:.4f} vs {w['metrics']['acc_norm']:.4f}")
        else:
            diffs = [abs(s["loglik"] - h) for s, h in zip(g, w["logliks"])]
            bytes_ = sum(s["bytes"] for s in g)
            bpb = -sum(s["loglik"] for s in g) / bytes_ / math.log(2)
            print(f"{task}: max |document log-likelihood difference| {max(diffs):.2e}; "
                  f"bits_per_byte {bpb:.6f} vs {w['metrics']['bits_per_byte']:.6f}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "harness":
        harness(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        compare(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
