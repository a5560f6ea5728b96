//! `eval` as a user calls it: every task kind and file format scored, results and samples written,
//! the same numbers at any batch size, and bad calls exit 1 naming the file, line or flag with nothing
//! written.

use std::path::{Path, PathBuf};

use serde_json::Value;
use zerolm_testkit::{untrained_model, workdir, Run};

fn eval(args: &[&str]) -> Run {
    zerolm_testkit::run(env!("CARGO_BIN_EXE_eval"), args)
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// One file of each format: question/choices, HellaSwag, C-Eval CSV, text, answer check.
fn tasks(dir: &Path) -> Vec<String> {
    vec![
        write(dir, "qa.jsonl", concat!(
            r#"{"question":"Question: What is 2 plus 2?\nAnswer:","choices":["4","5","22"],"answer":0}"#, "\n",
            r#"{"question":"Question: Where does Ann live?\nAnswer:","choices":["Paris","Rome"],"answer":"B"}"#, "\n",
        )),
        write(dir, "hellaswag.jsonl", concat!(
            r#"{"activity_label":"Cooking","ctx_a":"A man cuts onions.","ctx_b":"he","endings":["fries them.","sleeps [title] now.","sings.","runs."],"label":"0"}"#, "\n",
            r#"{"ctx":"The sky is","endings":["blue.","loud."],"label":0}"#, "\n",
        )),
        write(dir, "ceval.csv", "id,question,A,B,C,D,answer\n0,1+1=?,1,2,3,4,B\n1,\"中国的首都是?\",北京,上海,广州,深圳,A\n"),
        write(dir, "text.txt", "The first document.\nIt has two lines.\n\nThe second document.\n"),
        write(dir, "answers.jsonl", concat!(
            r#"{"conversations":[{"role":"user","content":"Where does Ann live?"},{"role":"assistant","content":"Ann lives in Paris."}],"answer":"Paris"}"#, "\n",
            r#"{"prompt":"What is 2 plus 2?","answer":"4"}"#, "\n",
        )),
    ]
}

fn model(work: &Path) -> PathBuf {
    untrained_model(&work.join("model"), "micro", 3)
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn run_all(
    model: &Path,
    tasks: &[String],
    work: &Path,
    tag: &str,
    extra: &[&str],
) -> (Value, String) {
    let (out, samples) = (
        work.join(format!("{tag}.json")),
        work.join(format!("{tag}.jsonl")),
    );
    let mut args = vec![
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend([
        "--samples",
        samples.to_str().unwrap(),
        "--threads",
        "2",
        "--max-new-tokens",
        "8",
    ]);
    for t in tasks {
        args.extend(["--task", t.as_str()]);
    }
    args.extend(extra);
    let run = eval(&args);
    run.assert_ok();
    (
        read_json(&out),
        std::fs::read_to_string(&samples).unwrap() + &run.stdout,
    )
}

#[test]
fn every_task_kind_is_scored_and_recorded() {
    let work = workdir("eval-cli", "kinds");
    let model = model(&work);
    let tasks = tasks(&work);
    let (results, text) = run_all(&model, &tasks, &work, "r", &[]);
    assert_eq!(
        (results["stage"].as_str(), results["format"].as_u64()),
        (Some("eval"), Some(1))
    );
    let z: Value = read_json(&model.join("zerolm.json"));
    assert_eq!(results["model"]["weights_blake3"], z["weights_blake3"]);
    let t = results["tasks"].as_array().unwrap();
    let kinds: Vec<(&str, &str, u64)> = t
        .iter()
        .map(|t| {
            (
                t["task"].as_str().unwrap(),
                t["kind"].as_str().unwrap(),
                t["items"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("qa", "mc", 2),
            ("hellaswag", "mc", 2),
            ("ceval", "mc", 2),
            ("text", "ppl", 2),
            ("answers", "answer", 2)
        ]
    );
    for task in t {
        assert_eq!(task["file_blake3"].as_str().unwrap().len(), 64);
        let m = &task["metrics"];
        let keys: &[&str] = match task["kind"].as_str().unwrap() {
            "mc" => &["acc", "acc_stderr", "acc_norm", "acc_norm_stderr"],
            "ppl" => &[
                "bits_per_byte",
                "byte_perplexity",
                "word_perplexity",
                "token_perplexity",
            ],
            _ => &["accuracy", "accuracy_stderr", "correct"],
        };
        for k in keys {
            assert!(m[*k].as_f64().is_some_and(f64::is_finite), "{task}: {k}");
        }
    }
    // One sample per item, each naming its task; the table lists every task.
    assert_eq!(text.lines().filter(|l| l.starts_with('{')).count(), 10);
    assert!(
        text.contains("\"context\":\"Cooking: A man cuts onions. He\""),
        "{text}"
    );
    for name in [
        "| qa | mc | 2 | acc |",
        "| ceval | mc |",
        "| text | ppl | 2 | bits_per_byte |",
        "| answers | answer |",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
}

#[test]
fn scores_are_the_same_for_any_batch_size_and_run() {
    let work = workdir("eval-cli", "batches");
    let model = model(&work);
    let tasks = tasks(&work)[..4].to_vec();
    let samples = |tag: &str, extra: &[&str]| -> Vec<Value> {
        run_all(&model, &tasks, &work, tag, extra);
        let text = std::fs::read_to_string(work.join(format!("{tag}.jsonl"))).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (a, again) = (
        samples("a", &["--batch-size", "1"]),
        samples("b", &["--batch-size", "1"]),
    );
    assert_eq!(a, again, "the same run twice");
    let c = samples("c", &["--batch-size", "64"]);
    for (x, y) in a.iter().zip(&c) {
        assert_eq!((&x["pred"], &x["pred_norm"]), (&y["pred"], &y["pred_norm"]));
        let lls = |v: &Value| -> Vec<f64> {
            match v.get("lls") {
                Some(l) => l
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect(),
                None => vec![v["loglik"].as_f64().unwrap()],
            }
        };
        for (p, q) in lls(x).iter().zip(lls(y)) {
            assert!((p - q).abs() <= 1e-5 * p.abs().max(1.0), "{p} vs {q}");
        }
    }
}

#[test]
fn limits_and_skips_are_counted() {
    let work = workdir("eval-cli", "limits");
    let model = model(&work);
    let ppl = write(
        &work,
        "docs.jsonl",
        "{\"text\":\"one\"}\n{\"text\":\"\"}\n{\"text\":\"two words\"}\n",
    );
    let tasks = vec![format!("ppl:{ppl}"), tasks(&work)[0].clone()];
    let (r, _) = run_all(
        &model,
        &tasks,
        &work,
        "r",
        &["--limit", "1", "--max-length", "4"],
    );
    let t = r["tasks"].as_array().unwrap();
    assert_eq!(
        (t[0]["items"].as_u64(), t[0]["skipped"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(t[1]["items"].as_u64(), Some(1));
    assert_eq!(r["settings"]["max_length"].as_u64(), Some(4));
    let (r, _) = run_all(&model, &tasks[..1], &work, "s", &[]);
    let t = &r["tasks"][0];
    assert_eq!(
        (t["items"].as_u64(), t["skipped"].as_u64()),
        (Some(2), Some(1))
    );
}

#[test]
fn bad_calls_name_the_problem_and_write_nothing() {
    let work = workdir("eval-cli", "bad");
    let model = model(&work);
    let m = model.to_str().unwrap();
    let out = work.join("r.json");
    let o = out.to_str().unwrap();
    let good = tasks(&work)[0].clone();
    let missing = work.join("nope.jsonl");
    eval(&[
        "--model",
        m,
        "--task",
        missing.to_str().unwrap(),
        "--out",
        o,
    ])
    .assert_user_error("nope.jsonl");
    let unknown = write(&work, "u.jsonl", "{\"foo\":1}\n");
    eval(&[
        "--model", m, "--task", &unknown, "--task", &good, "--out", o,
    ])
    .assert_user_error("u.jsonl:1: cannot tell the task kind");
    let bad_row = write(&work, "b.jsonl", "{\"question\":\"q\",\"choices\":[\"a\",\"b\"],\"answer\":0}\n{\"question\":\"q\",\"choices\":[\"a\",\"b\"],\"answer\":5}\n");
    eval(&["--model", m, "--task", &bad_row, "--out", o])
        .assert_user_error("b.jsonl:2: the answer index 5 is outside the 2 choices");
    let broken = write(&work, "j.jsonl", "{\"question\":\n");
    eval(&["--model", m, "--task", &broken, "--out", o]).assert_user_error("j.jsonl:1");
    let csv = write(&work, "c.csv", "question,A,B,answer\nq,1,2,A\n");
    eval(&["--model", m, "--task", &csv, "--out", o]).assert_user_error("`C` is missing");
    let not_answer = write(&work, "a.jsonl", "{\"text\":\"x\"}\n");
    eval(&[
        "--model",
        m,
        "--task",
        &format!("answer:{not_answer}"),
        "--out",
        o,
    ])
    .assert_user_error("a.jsonl:1");
    eval(&[
        "--model",
        m,
        "--task",
        &good,
        "--batch-size",
        "0",
        "--out",
        o,
    ])
    .assert_user_error("--batch-size");
    eval(&[
        "--model",
        work.to_str().unwrap(),
        "--task",
        &good,
        "--out",
        o,
    ])
    .assert_user_error("config.json");
    let long = write(
        &work,
        "long.jsonl",
        "{\"question\":\"Q:\",\"choices\":[\"one two three four five six\",\"x\"],\"answer\":1}\n",
    );
    eval(&[
        "--model",
        m,
        "--task",
        &long,
        "--max-length",
        "3",
        "--out",
        o,
    ])
    .assert_user_error("long.jsonl:1: choice 0 is");
    assert!(!out.exists(), "nothing is written by a failed run");
    assert!(std::fs::read_dir(&work).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains("tmp")));
}
