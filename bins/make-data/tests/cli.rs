//! `make-data` as a user runs it: usage mistakes and an output path through a file are user errors
//! (exit 1) with a clear message; a corpus is written where asked.

use zerolm_testkit::{workdir, Run};

fn make_data(args: &[&str]) -> Run {
    zerolm_testkit::run(env!("CARGO_BIN_EXE_make-data"), args)
}

#[test]
fn usage_mistakes_and_unwritable_outputs_exit_1() {
    make_data(&["shipped", "--no-such-flag"]).assert_user_error("--no-such-flag");
    make_data(&["corpus"]).assert_user_error("--out");
    let dir = workdir("make-data", "errors");
    std::fs::write(dir.join("a-file"), b"").unwrap();
    let through = dir.join("a-file/corpus.jsonl");
    make_data(&["corpus", "--out", through.to_str().unwrap(), "--mb", "1"])
        .assert_user_error("a-file");
    let help = make_data(&["--help"]);
    assert_eq!(help.code, 0, "{}", help.stderr);
}

#[test]
fn a_corpus_is_written_where_asked() {
    let dir = workdir("make-data", "corpus");
    let out = dir.join("c.jsonl");
    let r = make_data(&["corpus", "--out", out.to_str().unwrap(), "--mb", "1"]);
    r.assert_ok();
    assert!(std::fs::metadata(&out).unwrap().len() >= 1_000_000);
}
