//! API tests of the data layer on the fixtures in `tests/fixtures/`: every input format, Hugging Face
//! chat-template equality, loss-mask boundaries, truncation, round trips and determinism.

use std::path::{Path, PathBuf};
use zerolm_data::artifact::{self, keys, TokenRow};
use zerolm_data::chat::{CompletionEnd, Message, Role};
use zerolm_data::encode::{self, sft_tokens, truncate_pair, Counts, EncodeConfig, Overlong};
use zerolm_data::formats::{Kind, Template};
use zerolm_data::tokenizer::{self, TokenizerDir, TrainConfig};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn tok() -> TokenizerDir {
    TokenizerDir::load(&fixtures().join("tokenizer")).unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("zerolm-data-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Tokenize fixture files and read the rows back.
fn run(
    kind: Kind,
    inputs: &[&str],
    cfg: impl FnOnce(&mut EncodeConfig),
    out: &str,
) -> (Vec<TokenRow>, Counts) {
    let mut c = EncodeConfig::new(kind);
    cfg(&mut c);
    let inputs: Vec<PathBuf> = inputs.iter().map(|i| fixtures().join(i)).collect();
    let out = tmp(out);
    let report = encode::run(&tok(), &inputs, &out, &c, &["test".into()], &mut ()).unwrap();
    let file = artifact::read(&out, kind).unwrap();
    file.check_tokenizer(&tok().fingerprint).unwrap();
    assert_eq!(file.rows.len() as u64, report.counts.rows_written);
    (file.rows, report.counts)
}

fn docs(rows: &[TokenRow]) -> Vec<String> {
    let t = tok();
    rows.iter()
        .map(|r| match r {
            TokenRow::Doc(ids) => t.decode(ids).unwrap(),
            other => panic!("not a document: {other:?}"),
        })
        .collect()
}

#[test]
fn pretrain_reads_jsonl_gzip_json_array_text_and_parquet() {
    let want = [
        "Alice Adams lives in Paris. She is a doctor.",
        "王伟住在北京。王伟今年35岁。",
        "12 plus 7 equals 19.",
    ];
    assert_eq!(
        docs(
            &run(
                Kind::Pretrain,
                &["pretrain/text.jsonl"],
                |_| {},
                "p1.parquet"
            )
            .0
        ),
        want
    );
    assert_eq!(
        docs(
            &run(
                Kind::Pretrain,
                &["pretrain/text.jsonl.gz"],
                |_| {},
                "p2.parquet"
            )
            .0
        ),
        want
    );
    assert_eq!(
        docs(
            &run(
                Kind::Pretrain,
                &["pretrain/array.json"],
                |_| {},
                "p3.parquet"
            )
            .0
        ),
        ["Bruno Baker is a pilot.", "李娜最喜欢的颜色是红色。"]
    );
    assert_eq!(
        docs(&run(Kind::Pretrain, &["pretrain/docs.txt"], |_| {}, "p4.parquet").0),
        [
            "First document, line one.\nStill the first document.",
            "第二个文档。"
        ]
    );
    let (rows, _) = run(
        Kind::Pretrain,
        &["pretrain/text_column.parquet"],
        |c| c.text_field = "content".into(),
        "p5.parquet",
    );
    assert_eq!(docs(&rows), ["Clara Chen is a chef.", "陈静住在上海。"]);
}

#[test]
fn chat_template_renders_and_encodes_exactly_like_hugging_face() {
    let t = tok();
    let cases: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("hf_chat_template.json")).unwrap(),
    )
    .unwrap();
    let cases = cases.as_array().unwrap();
    assert_eq!(cases.len(), 10);
    for case in cases {
        let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
        let text = t
            .template
            .render(&messages, case["add_generation_prompt"].as_bool().unwrap())
            .unwrap();
        assert_eq!(text, case["text"].as_str().unwrap());
        let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(t.encode(&text).unwrap(), ids, "{text}");
        assert_eq!(t.decode(&ids).unwrap(), case["decoded"].as_str().unwrap());
    }
}

#[test]
fn loss_mask_covers_assistant_content_through_im_end_and_nothing_else() {
    // --completion-end eos
    let t = tok();
    let msgs = vec![
        Message::new(Role::System, "You are a helpful assistant."),
        Message::new(Role::User, "Hi"),
        Message::new(Role::Assistant, "Hello!"),
        Message::new(Role::User, "王伟住在哪里？"),
        Message::new(Role::Assistant, "王伟住在北京。"),
    ];
    let (ids, mask) = sft_tokens(&t, &msgs, CompletionEnd::Eos).unwrap();
    assert_eq!(ids.len(), mask.len());
    // The supervised runs, as ids: exactly the answers' tokens followed by <|im_end|> (id 2).
    let mut runs: Vec<Vec<u32>> = Vec::new();
    let mut prev = 0;
    for (&id, &m) in ids.iter().zip(&mask) {
        if m == 1 {
            if prev == 0 {
                runs.push(Vec::new());
            }
            runs.last_mut().unwrap().push(id);
        }
        prev = m;
    }
    let answer = |s: &str| {
        let mut v = t.encode(s).unwrap();
        v.push(2);
        v
    };
    assert_eq!(runs, vec![answer("Hello!"), answer("王伟住在北京。")]);
    // Each run starts right after "<|im_start|>assistant\n" and is followed by the "\n" separator.
    let nl = t.encode("\n").unwrap()[0];
    for (i, w) in mask.windows(2).enumerate() {
        if w == [0, 1] {
            assert!(t
                .decode(&ids[..=i])
                .unwrap()
                .ends_with("<|im_start|>assistant\n"));
        }
        if w == [1, 0] {
            assert_eq!((ids[i], ids[i + 1]), (2, nl));
        }
    }
    assert_eq!(
        *mask.last().unwrap(),
        0,
        "the final newline is not supervised"
    );
}

#[test]
fn template_completion_end_also_supervises_the_turn_separator_as_trl_does() {
    let t = tok();
    let msgs = vec![
        Message::new(Role::User, "Hi"),
        Message::new(Role::Assistant, "Hello!"),
        Message::new(Role::User, "王伟住在哪里？"),
        Message::new(Role::Assistant, "王伟住在北京。"),
    ];
    let (eos_ids, eos_mask) = sft_tokens(&t, &msgs, CompletionEnd::Eos).unwrap();
    let (ids, mask) = sft_tokens(&t, &msgs, CompletionEnd::Template).unwrap();
    assert_eq!(ids, eos_ids, "the ids do not depend on where the mask ends");
    let nl = t.encode("\n").unwrap()[0];
    // every supervised run now ends with <|im_end|> "\n", one token more than with eos
    let extra: Vec<usize> = (0..ids.len())
        .filter(|&i| mask[i] == 1 && eos_mask[i] == 0)
        .collect();
    assert_eq!(extra.len(), 2);
    for i in extra {
        assert_eq!((ids[i - 1], ids[i]), (2, nl));
    }
    assert_eq!(*mask.last().unwrap(), 1, "the final newline is supervised");
}

#[test]
fn sft_formats_conversations_messages_and_parquet_agree() {
    let (jsonl, counts) = run(
        Kind::Sft,
        &["sft/conversations.jsonl"],
        |_| {},
        "s1.parquet",
    );
    let (parquet, _) = run(
        Kind::Sft,
        &["sft/conversations.parquet"],
        |_| {},
        "s2.parquet",
    );
    assert_eq!(jsonl, parquet);
    assert_eq!(counts.rows_written, 3);
    let (msgs, _) = run(Kind::Sft, &["sft/messages.json"], |_| {}, "s3.parquet");
    let TokenRow::Sft {
        input_ids,
        loss_mask,
    } = &msgs[0]
    else {
        panic!()
    };
    let supervised: Vec<u32> = input_ids
        .iter()
        .zip(loss_mask)
        .filter(|(_, &m)| m == 1)
        .map(|(&i, _)| i)
        .collect();
    assert_eq!(
        tok().decode(&supervised).unwrap(),
        "Bruno Baker is a pilot.<|im_end|>\n"
    );
}

fn pair(rows: &[TokenRow], i: usize) -> (String, String, String) {
    let t = tok();
    match &rows[i] {
        TokenRow::Dpo {
            prompt_ids,
            chosen_ids,
            rejected_ids,
            ..
        } => (
            t.decode(prompt_ids).unwrap(),
            t.decode(chosen_ids).unwrap(),
            t.decode(rejected_ids).unwrap(),
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn dpo_formats_split_prompt_and_completions_at_the_generation_prompt() {
    let user = |q: &str| format!("<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n");
    let (rows, counts) = run(Kind::Dpo, &["dpo/article.jsonl"], |_| {}, "d1.parquet");
    assert_eq!(counts.prefix_mismatch, 0);
    assert_eq!(
        pair(&rows, 0),
        (
            user("Where does Alice Adams live?"),
            "Alice Adams lives in Paris.<|im_end|>\n".into(),
            "Alice Adams lives in Rome.<|im_end|>\n".into()
        )
    );
    let TokenRow::Dpo { id, .. } = &rows[1] else {
        panic!()
    };
    assert_eq!(id, "a2");
    assert_eq!(
        run(Kind::Dpo, &["dpo/article.parquet"], |_| {}, "d2.parquet").0,
        rows
    );

    let standard = run(Kind::Dpo, &["dpo/trl_standard.jsonl"], |_| {}, "d3.parquet").0;
    let conversational = run(
        Kind::Dpo,
        &["dpo/trl_conversational.jsonl"],
        |_| {},
        "d4.parquet",
    )
    .0;
    assert_eq!(pair(&standard, 0), pair(&conversational, 0));
    assert_eq!(pair(&standard, 0).1, "2 plus 2 equals 4.<|im_end|>\n");
    // --completion-end eos stops the completions at <|im_end|>
    let eos = run(
        Kind::Dpo,
        &["dpo/trl_conversational.jsonl"],
        |c| c.completion_end = CompletionEnd::Eos,
        "d4e.parquet",
    )
    .0;
    assert_eq!(pair(&eos, 0).1, "2 plus 2 equals 4.<|im_end|>");
    assert_eq!(pair(&eos, 0).0, pair(&conversational, 0).0);

    // Implicit prompt (MiniMind dpo.jsonl) and hh-rlhf text give the same multi-turn split.
    let implicit = run(Kind::Dpo, &["dpo/implicit.jsonl"], |_| {}, "d5.parquet").0;
    let hh = run(Kind::Dpo, &["dpo/hh_rlhf.jsonl"], |_| {}, "d6.parquet").0;
    assert_eq!(pair(&implicit, 0), pair(&hh, 0));
    let (prompt, chosen, rejected) = pair(&implicit, 0);
    assert_eq!(
        prompt,
        format!(
            "{}Hello!<|im_end|>\n{}",
            user("Hi"),
            user("What is 2 plus 2?")
        )
    );
    assert_eq!(
        (chosen.as_str(), rejected.as_str()),
        (
            "2 plus 2 equals 4.<|im_end|>\n",
            "Why do you ask?<|im_end|>\n"
        )
    );

    // Raw template: the strings as they are, eos after each completion.
    let raw = run(
        Kind::Dpo,
        &["dpo/hh_rlhf.jsonl"],
        |c| c.template = Template::Raw,
        "d7.parquet",
    )
    .0;
    let (prompt, chosen, _) = pair(&raw, 0);
    assert!(
        prompt.ends_with("\n\nHuman: What is 2 plus 2?\n\nAssistant:"),
        "{prompt:?}"
    );
    assert_eq!(chosen, " 2 plus 2 equals 4.<|im_end|>");
}

#[test]
fn overlong_rows_are_truncated_dropped_or_split_and_counted() {
    let long = "Alice Adams lives in Paris. She is a doctor.";
    let n = tok().encode(long).unwrap().len();
    let (rows, c) = run(
        Kind::Pretrain,
        &["pretrain/text.jsonl"],
        |c| c.max_len = Some(5),
        "o1.parquet",
    );
    assert!(rows
        .iter()
        .all(|r| matches!(r, TokenRow::Doc(d) if d.len() <= 5)));
    assert_eq!((c.rows_written, c.truncated, c.dropped_overlong), (3, 3, 0));
    let (_, c) = run(
        Kind::Pretrain,
        &["pretrain/text.jsonl"],
        |c| {
            c.max_len = Some(n - 1);
            c.overlong = Overlong::Drop;
        },
        "o2.parquet",
    );
    assert_eq!(c.dropped_overlong, 1);
    let (rows, c) = run(
        Kind::Pretrain,
        &["pretrain/text.jsonl"],
        |c| {
            c.max_len = Some(4);
            c.overlong = Overlong::Split;
        },
        "o3.parquet",
    );
    let total: usize = rows
        .iter()
        .map(|r| if let TokenRow::Doc(d) = r { d.len() } else { 0 })
        .sum();
    assert_eq!(total as u64, c.tokens, "split loses no token");
    assert_eq!(c.split, 3);
    let pieces: Vec<u32> = rows
        .iter()
        .flat_map(|r| {
            if let TokenRow::Doc(d) = r {
                d.clone()
            } else {
                vec![]
            }
        })
        .collect();
    let t = tok();
    let whole = [
        "Alice Adams lives in Paris. She is a doctor.",
        "王伟住在北京。王伟今年35岁。",
        "12 plus 7 equals 19.",
    ]
    .map(|d| t.encode(d).unwrap())
    .concat();
    assert_eq!(
        pieces, whole,
        "the pieces are the documents' tokens in order"
    );

    // DPO: the prompt keeps its end, completions are cut to the room left.
    let (mut p, mut c, mut r) = (
        (0..10).collect::<Vec<u32>>(),
        vec![100, 101, 102],
        vec![200],
    );
    assert!(truncate_pair(&mut p, &mut c, &mut r, 8));
    assert_eq!(
        (p, c, r),
        (
            (5..10).collect::<Vec<u32>>(),
            vec![100, 101, 102],
            vec![200]
        )
    );
    let (mut p, mut c, mut r) = (
        (0..10).collect::<Vec<u32>>(),
        (100..110).collect::<Vec<u32>>(),
        vec![200],
    );
    assert!(truncate_pair(&mut p, &mut c, &mut r, 8));
    assert_eq!((p.len(), c.len(), r.len()), (4, 4, 1));
}

#[test]
fn empty_rows_are_counted_and_skipped() {
    let (rows, c) = run(
        Kind::Pretrain,
        &["bad/empty_rows.jsonl"],
        |_| {},
        "e1.parquet",
    );
    assert_eq!((rows.len(), c.rows_read, c.skipped_empty), (2, 4, 2));
    let (_, c) = run(
        Kind::Dpo,
        &["bad/empty_completion.jsonl"],
        |_| {},
        "e2.parquet",
    );
    assert_eq!((c.rows_written, c.skipped_empty), (1, 1));
}

#[test]
fn decode_encode_round_trips_chinese_and_english() {
    let t = tok();
    for text in [
        "Alice Adams lives in Paris.",
        "王伟住在北京，今年35岁。",
        "Mixed 中英文 text with émojis 🎉 and tabs\tand\nnewlines",
        "生僻字：龘靐齉 and rare English words like floccinaucinihilipilification",
    ] {
        assert_eq!(t.decode(&t.encode(text).unwrap()).unwrap(), text);
    }
}

#[test]
fn tokenizer_training_and_tokenizing_are_byte_identical_across_runs() {
    let corpus = [fixtures().join("../../data/pretrain.jsonl")];
    let cfg = TrainConfig {
        vocab_size: 700,
        ..TrainConfig::default()
    };
    let (a, b) = (tmp("tok-a"), tmp("tok-b"));
    tokenizer::train(&corpus, &cfg, &a).unwrap();
    tokenizer::train(&corpus, &cfg, &b).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f}"
        );
    }
    let t = TokenizerDir::load(&a).unwrap();
    assert_eq!(t.vocab_size(), 700);
    for (id, s) in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .iter()
        .enumerate()
    {
        assert_eq!(t.tokenizer.token_to_id(s), Some(id as u32));
    }
    assert_eq!((t.eos_id, t.pad_id), (2, 0));

    let out = |n| tmp(&format!("det-{n}.parquet"));
    let inputs = [fixtures().join("sft/conversations.jsonl")];
    for n in 0..2 {
        encode::run(
            &tok(),
            &inputs,
            &out(n),
            &EncodeConfig::new(Kind::Sft),
            &["same".into()],
            &mut (),
        )
        .unwrap();
    }
    assert_eq!(
        std::fs::read(out(0)).unwrap(),
        std::fs::read(out(1)).unwrap()
    );
}

/// The number of Han characters in the longest vocabulary entry.
fn longest_han_run(t: &TokenizerDir) -> usize {
    (0..t.vocab_size() as u32)
        .map(|id| {
            let text = t.decode(&[id]).unwrap_or_default();
            text.chars()
                .filter(|c| ('\u{4e00}'..='\u{9fff}').contains(c))
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[test]
fn split_han_keeps_chinese_clauses_from_becoming_single_tokens() {
    // The shipped corpus repeats each biography sentence dozens of times; plain byte-level BPE (MiniMind's
    // recipe) learns whole clauses such as 张秀英住在内罗毕 as one token.
    let corpus = [fixtures().join("../../data/pretrain.jsonl")];
    let plain = tmp("tok-han-plain");
    tokenizer::train(&corpus, &TrainConfig::default(), &plain).unwrap();
    let plain = TokenizerDir::load(&plain).unwrap();
    assert!(longest_han_run(&plain) >= 6, "{}", longest_han_run(&plain));
    let clause = "张秀英住在内罗毕。";
    assert!(plain.encode(clause).unwrap().len() <= 3);

    let split = tmp("tok-han-split");
    let cfg = TrainConfig {
        split_han: true,
        ..TrainConfig::default()
    };
    tokenizer::train(&corpus, &cfg, &split).unwrap();
    let split = TokenizerDir::load(&split).unwrap();
    assert_eq!(longest_han_run(&split), 1);
    // One token per character (+ the full stop); English words still merge; text round-trips.
    let ids = split.encode(clause).unwrap();
    assert_eq!(ids.len(), 9, "{ids:?}");
    assert_eq!(split.encode("Alice Baker has a pet cat.").unwrap().len(), 7);
    for text in [clause, "Alice Baker 住在 Paris，今年39岁。"] {
        assert_eq!(split.decode(&split.encode(text).unwrap()).unwrap(), text);
    }
    // The setting is part of the tokenizer file, so the fingerprint tells the two apart.
    assert_ne!(plain.fingerprint, split.fingerprint);
}

#[test]
fn token_files_record_provenance_and_readers_check_it() {
    run(
        Kind::Sft,
        &["sft/conversations.jsonl"],
        |_| {},
        "prov.parquet",
    );
    let file = artifact::read(&tmp("prov.parquet"), Kind::Sft).unwrap();
    let inputs: serde_json::Value = serde_json::from_str(&file.metadata[keys::INPUTS]).unwrap();
    let (hash, _) = zerolm_io::hash_file(&fixtures().join("sft/conversations.jsonl")).unwrap();
    assert_eq!(inputs[0]["blake3"], hash);
    assert_eq!(inputs[0]["format"], "conversations");
    let counts: serde_json::Value = serde_json::from_str(&file.metadata[keys::COUNTS]).unwrap();
    assert_eq!(counts["rows_written"], 3);
    assert_eq!(file.metadata[keys::SCHEMA_VERSION], "1");
    assert_eq!(file.tokenizer_fingerprint(), tok().fingerprint);

    let err = artifact::read(&tmp("prov.parquet"), Kind::Dpo)
        .unwrap_err()
        .to_string();
    assert!(err.contains("holds `sft` tokens, expected `dpo`"), "{err}");
    let err = file
        .check_tokenizer("0123456789abcdef")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tokenizer") && err.contains("re-run `tokenize`"),
        "{err}"
    );
    let err = artifact::read(&fixtures().join("dpo/article.parquet"), Kind::Dpo)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a zerolm token file"), "{err}");
}

#[test]
fn a_prompt_whose_tokens_merge_into_the_completion_is_handled_and_counted() {
    // Raw template, prompt ending in a space: " Paris" is one pre-token in prompt+completion, so the
    // prompt's own tokens (ending in " ") are not a prefix of the whole. As TRL does, the prompt keeps
    // the tokens it shares with both sequences and the completions take the rest.
    let input = tmp("mismatch.jsonl");
    std::fs::write(&input, "{\"prompt\": \"Alice Adams lives in \", \"chosen\": \"Paris.\", \"rejected\": \"Rome.\"}\n").unwrap();
    let out = tmp("mismatch.parquet");
    let mut cfg = EncodeConfig::new(Kind::Dpo);
    cfg.template = Template::Raw;
    let report = encode::run(&tok(), &[input], &out, &cfg, &[], &mut ()).unwrap();
    assert_eq!(report.counts.prefix_mismatch, 1);
    let rows = artifact::read(&out, Kind::Dpo).unwrap().rows;
    let (prompt, chosen, _) = pair(&rows, 0);
    assert_eq!(
        (prompt.as_str(), chosen.as_str()),
        ("Alice Adams lives in", " Paris.<|im_end|>")
    );
    let file = artifact::read(&out, Kind::Dpo).unwrap();
    assert_eq!(file.completion_end(), Some("template"));
}

/// Write `content` to a temp input and tokenize it; returns the counts or the error message.
fn try_run(
    kind: Kind,
    name: &str,
    content: &[u8],
    cfg: impl FnOnce(&mut EncodeConfig),
) -> Result<Counts, String> {
    let input = tmp(name);
    std::fs::write(&input, content).unwrap();
    let mut c = EncodeConfig::new(kind);
    cfg(&mut c);
    let out = tmp(&format!("{name}.parquet"));
    encode::run(&tok(), &[input], &out, &c, &[], &mut ())
        .map(|r| r.counts)
        .map_err(|e| e.to_string())
}

#[test]
fn dpo_pairs_that_differ_before_the_answer_are_located_row_errors() {
    let differ_at_user = br#"{"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "rejected": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "c"}]}
{"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}], "rejected": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "X"}, {"role": "assistant", "content": "e"}]}
"#;
    let err = try_run(Kind::Dpo, "differ.jsonl", differ_at_user, |_| {}).unwrap_err();
    assert!(
        err.contains("differ.jsonl:2") && err.contains("User turn"),
        "{err}"
    );
    let c = try_run(Kind::Dpo, "differ2.jsonl", differ_at_user, |c| {
        c.skip_bad = true
    })
    .unwrap();
    assert_eq!((c.rows_written, c.skipped_bad), (1, 1));

    // hh-rlhf (chat): the prompt is everything before the last Assistant turn, shared by both.
    let hh = br#"{"chosen": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: 2+2?\n\nAssistant: 4", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away\n\nHuman: 2+2?\n\nAssistant: 5"}
"#;
    let err = try_run(Kind::Dpo, "hh.jsonl", hh, |_| {}).unwrap_err();
    assert!(
        err.contains("hh.jsonl:1") && err.contains("do not share the prompt"),
        "{err}"
    );

    let same = br#"{"prompt": "q", "chosen": "same", "rejected": "same"}
{"prompt": "q", "chosen": "yes", "rejected": "no"}
"#;
    let c = try_run(Kind::Dpo, "same.jsonl", same, |_| {}).unwrap();
    assert_eq!((c.rows_written, c.skipped_empty), (1, 1));
}

#[test]
fn text_files_strip_the_bom_and_follow_text_field_and_utf8_errors_point_at_the_byte() {
    let t = tok();
    let with_bom = try_run(
        Kind::Pretrain,
        "bom.txt",
        "\u{feff}hello\n\nworld\n".as_bytes(),
        |_| {},
    )
    .unwrap();
    let without = try_run(Kind::Pretrain, "nobom.txt", b"hello\n\nworld\n", |_| {}).unwrap();
    assert_eq!(with_bom.tokens, without.tokens);
    assert_eq!(
        without.tokens as usize,
        t.encode("hello").unwrap().len() + t.encode("world").unwrap().len()
    );
    let c = try_run(Kind::Pretrain, "field.txt", b"hello\n", |c| {
        c.text_field = "content".into()
    })
    .unwrap();
    assert_eq!(c.rows_written, 1);
    let err = try_run(
        Kind::Pretrain,
        "utf8.jsonl",
        b"{\"text\": \"ok\"}\n  {\"text\":\"ab\xff\"}\n",
        |_| {},
    )
    .unwrap_err();
    assert!(
        err.contains("utf8.jsonl:2") && err.contains("byte 14"),
        "{err}"
    );
    // With --skip-bad, detection uses the first row that names a format.
    let c = try_run(
        Kind::Pretrain,
        "late.jsonl",
        b"{\"txt\": \"oops\"}\n{\"text\": \"hello\"}\n",
        |c| c.skip_bad = true,
    )
    .unwrap();
    assert_eq!((c.rows_written, c.skipped_bad), (1, 1));
}

#[test]
fn tokenize_pretrain_writes_the_token_stream_a_stage_reads_without_the_parquet_rows() {
    use zerolm_data::stream::{self, Layout, TokenStream};
    let (rows, _) = run(
        Kind::Pretrain,
        &["pretrain/text.jsonl"],
        |_| {},
        "stream.parquet",
    );
    let parquet = tmp("stream.parquet");
    let bin = stream::path_for(&parquet);
    let written = std::fs::metadata(&bin).unwrap().modified().unwrap();
    let t = tok();
    let (s, blake3) =
        TokenStream::open_or_build(&parquet, Layout::Docs, t.eos_id, t.vocab_size()).unwrap();
    assert_eq!(blake3, zerolm_io::hash_file(&parquet).unwrap().0);
    assert_eq!(
        std::fs::metadata(&bin).unwrap().modified().unwrap(),
        written,
        "a current stream is opened, not rebuilt"
    );
    // the stream is every document followed by eos
    let mut expected = Vec::new();
    for row in &rows {
        let TokenRow::Doc(ids) = row else { panic!() };
        expected.extend_from_slice(ids);
        expected.push(t.eos_id);
    }
    let mut got = Vec::new();
    s.read(0, s.tokens() as usize, &mut got).unwrap();
    assert_eq!(got, expected);
    assert_eq!(s.documents(), rows.len() as u64);
    assert_eq!(s.counts().iter().sum::<u64>(), s.tokens());
    // another file under the same name: the stream is made again from it
    run(
        Kind::Pretrain,
        &["pretrain/docs.txt"],
        |_| {},
        "other.parquet",
    );
    std::fs::copy(tmp("other.parquet"), &parquet).unwrap();
    let (s, blake3) =
        TokenStream::open_or_build(&parquet, Layout::Docs, t.eos_id, t.vocab_size()).unwrap();
    assert_eq!(blake3, zerolm_io::hash_file(&parquet).unwrap().0);
    let (other, _) = TokenStream::open_or_build(
        &tmp("other.parquet"),
        Layout::Docs,
        t.eos_id,
        t.vocab_size(),
    )
    .unwrap();
    assert_eq!(s.tokens(), other.tokens());
    // a damaged stream is made again too
    std::fs::write(&bin, b"not a stream").unwrap();
    let (s, _) =
        TokenStream::open_or_build(&parquet, Layout::Docs, t.eos_id, t.vocab_size()).unwrap();
    assert_eq!(s.tokens(), other.tokens());
    // where the stream cannot be written beside its file, it goes to the temp directory
    std::fs::remove_file(&bin).unwrap();
    std::fs::create_dir(&bin).unwrap();
    let (s, blake3) =
        TokenStream::open_or_build(&parquet, Layout::Docs, t.eos_id, t.vocab_size()).unwrap();
    assert_eq!(s.tokens(), other.tokens());
    let spare = std::env::temp_dir()
        .join("zerolm-streams")
        .join(format!("{blake3}.bin"));
    assert!(spare.is_file(), "{}", spare.display());
}

#[test]
fn tokenize_dpo_writes_a_pair_stream_that_reads_back_every_pair() {
    use zerolm_data::stream::{self, Layout, TokenStream};
    let (rows, _) = run(Kind::Dpo, &["dpo/article.jsonl"], |_| {}, "pairs.parquet");
    let parquet = tmp("pairs.parquet");
    assert!(stream::path_for(&parquet).is_file(), "tokenize writes it");
    let t = tok();
    let (s, _) =
        TokenStream::open_or_build(&parquet, Layout::Pairs, t.eos_id, t.vocab_size()).unwrap();
    assert_eq!(s.rows(), rows.len() as u64);
    let mut lengths = Vec::new();
    s.for_each_pair(|_, e| {
        lengths.push((e.prompt, e.chosen, e.rejected));
        Ok(())
    })
    .unwrap();
    for (i, row) in rows.iter().enumerate() {
        let TokenRow::Dpo {
            id,
            prompt_ids,
            chosen_ids,
            rejected_ids,
        } = row
        else {
            panic!()
        };
        let p = s.pair(i as u64).unwrap();
        assert_eq!(
            (&p.id, &p.prompt, &p.chosen, &p.rejected),
            (id, prompt_ids, chosen_ids, rejected_ids)
        );
        let lens = (
            prompt_ids.len() as u32,
            chosen_ids.len() as u32,
            rejected_ids.len() as u32,
        );
        assert_eq!(lengths[i], lens);
    }
    let mut sequential = Vec::new();
    s.for_each_pair_row(|i, p| {
        sequential.push(p);
        assert_eq!(i as usize + 1, sequential.len());
        Ok(())
    })
    .unwrap();
    let one_by_one: Vec<_> = (0..s.rows()).map(|i| s.pair(i).unwrap()).collect();
    assert_eq!(sequential, one_by_one);
    // a stream cut short is not trusted: it is built again
    let bin = stream::path_for(&parquet);
    let bytes = std::fs::read(&bin).unwrap();
    std::fs::write(&bin, &bytes[..bytes.len() - 3]).unwrap();
    let (s, _) =
        TokenStream::open_or_build(&parquet, Layout::Pairs, t.eos_id, t.vocab_size()).unwrap();
    let TokenRow::Dpo { id, .. } = &rows[0] else {
        panic!()
    };
    assert_eq!(&s.pair(0).unwrap().id, id);
    assert_eq!(
        std::fs::read(&bin).unwrap(),
        bytes,
        "rebuilt to the same bytes"
    );
}

#[test]
fn sharded_output_is_a_directory_of_complete_token_files() {
    let out = tmp("sft-shards");
    let mut cfg = EncodeConfig::new(Kind::Sft);
    cfg.shard.rows = Some(2);
    let input = fixtures().join("sft/conversations.jsonl");
    let report = encode::run(
        &tok(),
        std::slice::from_ref(&input),
        &out,
        &cfg,
        &[],
        &mut (),
    )
    .unwrap();
    assert_eq!(report.files.len(), 2);
    let mut rows = 0;
    for (i, f) in report.files.iter().enumerate() {
        let file = artifact::read(f, Kind::Sft).unwrap();
        file.check_tokenizer(&tok().fingerprint).unwrap();
        assert_eq!(file.metadata[keys::SHARD], i.to_string());
        rows += file.rows.len();
    }
    assert_eq!(rows, 3);
    let expanded = zerolm_data::output::expand_inputs(std::slice::from_ref(&out)).unwrap();
    assert_eq!(expanded, report.files);
    let pattern = out.join("part-0000[1-9].parquet");
    assert_eq!(
        zerolm_data::output::expand_inputs(&[pattern]).unwrap(),
        report.files[1..]
    );
    let none = zerolm_data::output::expand_inputs(&[out.join("*.txt")]).unwrap_err();
    assert!(none.to_string().contains("no token file"), "{none}");
    // a run that fails after writing shards leaves no directory
    let failed = tmp("sft-shards-failed");
    let bad = tmp("good-then-bad.jsonl");
    let good = std::fs::read_to_string(&input).unwrap();
    std::fs::write(&bad, format!("{good}{{not json\n")).unwrap();
    cfg.shard.rows = Some(1);
    cfg.chunk_rows = 1; // three shards are written before the bad row is read
    let err = encode::run(&tok(), &[bad], &failed, &cfg, &[], &mut ()).unwrap_err();
    assert!(err.to_string().contains(":4"), "{err}");
    assert!(!failed.exists());
    assert!(!zerolm_io::temp_path(&failed).exists());
}
