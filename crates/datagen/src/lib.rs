//! Deterministic generator of zerolm's shipped dataset: a bilingual (English/Chinese) world of people,
//! cities and sums, rendered as a pretraining corpus, SFT conversations and DPO preference pairs, each with
//! a held-out eval split whose answers can be checked by string match.
//!
//! Same [`GenConfig`] → byte-identical files (own PRNG, no hash-map iteration, fixed key order).

pub mod mc;
pub mod text;
pub mod world;

use serde::Serialize;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use text::Lang;
use world::{Attr, Rng, World, ATTRS, CITIES};

#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid generator setting: {0}")]
    Config(String),
}

impl GenError {
    /// A setting, or a write refused because of the path given, is the user's to fix.
    pub fn is_user_error(&self) -> bool {
        match self {
            GenError::Io { source, .. } => zerolm_io::is_user_fixable(source),
            GenError::Config(_) => true,
        }
    }
}

/// Sizes of the generated dataset. [`GenConfig::default`] is what `data/` ships.
#[derive(Debug, Clone)]
pub struct GenConfig {
    pub seed: u64,
    pub people: usize,
    /// Fraction of (person, attribute) facts asked about only in the eval splits.
    pub held_out: f64,
    /// Biography documents per person and language in the pretraining corpus.
    pub bios_per_person: usize,
    /// Largest operand of the addition facts (`0..=max_operand`).
    pub max_operand: u32,
    /// How often the pretraining corpus states each addition fact (a + b for every pair of operands).
    /// Every sum is stated, so every held-out sum can be learned in pretraining as the facts can.
    pub sum_repeats: usize,
    pub sft_rows: usize,
    pub dpo_rows: usize,
    pub dpo_conversation_rows: usize,
    pub eval_rows: usize,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            seed: 2024,
            people: 96,
            held_out: 0.15,
            bios_per_person: 40,
            max_operand: 30,
            sum_repeats: 8,
            sft_rows: 6000,
            dpo_rows: 3000,
            dpo_conversation_rows: 1000,
            eval_rows: 400,
        }
    }
}

#[derive(Serialize)]
struct TextRow {
    text: String,
}

#[derive(Serialize, Clone)]
pub struct Message {
    pub role: &'static str,
    pub content: String,
}

fn msg(role: &'static str, content: String) -> Message {
    Message { role, content }
}

#[derive(Serialize)]
struct SftRow {
    conversations: Vec<Message>,
    #[serde(skip_serializing_if = "Option::is_none")]
    answer: Option<String>,
}

/// The article's DPO row: `{"id", "prompt", "chosen", "rejected"}` strings.
#[derive(Serialize)]
struct DpoRow {
    id: String,
    prompt: String,
    chosen: String,
    rejected: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    answer: Option<String>,
}

/// MiniMind `dpo.jsonl`: chosen and rejected are whole conversations sharing their leading turns.
#[derive(Serialize)]
struct DpoConversationRow {
    chosen: Vec<Message>,
    rejected: Vec<Message>,
}

/// What one generated file holds.
#[derive(Debug, Clone)]
pub struct FileSummary {
    pub name: String,
    pub rows: usize,
    pub bytes: u64,
}

/// A question about one fact, with its checkable answer.
struct Fact {
    person: usize,
    attr: Attr,
}

fn lang(rng: &mut Rng) -> Lang {
    if rng.chance(0.5) {
        Lang::En
    } else {
        Lang::Zh
    }
}

/// Write rows as JSONL to `dir/name` atomically (temp file, fsync, rename).
fn write_jsonl<T: Serialize>(dir: &Path, name: &str, rows: &[T]) -> Result<FileSummary, GenError> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let io = |source| GenError::Io {
        path: path.clone(),
        source,
    };
    let file = File::create(&tmp).map_err(io)?;
    let mut w = BufWriter::new(file);
    for row in rows {
        serde_json::to_writer(&mut w, row).map_err(|e| io(e.into()))?;
        w.write_all(b"\n").map_err(io)?;
    }
    let file = w.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    let bytes = std::fs::metadata(&path).map_err(io)?.len();
    Ok(FileSummary {
        name: name.to_string(),
        rows: rows.len(),
        bytes,
    })
}

/// Sentences of one language as a document: English ones separated by spaces, Chinese ones run together.
fn document(sentences: &[String], lang: Lang) -> String {
    sentences.join(if lang == Lang::En { " " } else { "" })
}

/// One pretraining document: a short biography, a set of sums, or facts about cities.
fn pretrain_doc(world: &World, rng: &mut Rng, max_operand: u32, person: Option<usize>) -> String {
    let lang = lang(rng);
    let kind = if person.is_some() {
        0
    } else {
        1 + rng.below(2)
    };
    let sentences: Vec<String> = match kind {
        0 => {
            let p = &world.people[person.unwrap_or(0)];
            let mut attrs = ATTRS.to_vec();
            rng.shuffle(&mut attrs);
            let keep = 3 + rng.below(3);
            let mut s: Vec<String> = attrs[..keep]
                .iter()
                .map(|&a| text::statement(p, a, lang, rng, None))
                .collect();
            if rng.chance(0.3) {
                s.push(text::city_country(p.city, lang));
            }
            s
        }
        1 => (0..3 + rng.below(4))
            .map(|_| {
                let a = rng.below(max_operand as usize + 1) as u32;
                let b = rng.below(max_operand as usize + 1) as u32;
                text::sum_statement(a, b, lang, rng)
            })
            .collect(),
        _ => return city_doc(rng, lang),
    };
    document(&sentences, lang)
}

fn city_doc(rng: &mut Rng, lang: Lang) -> String {
    let sentences: Vec<String> = (0..2 + rng.below(3))
        .map(|_| text::city_country(rng.below(CITIES.len()), lang))
        .collect();
    document(&sentences, lang)
}

/// Every addition fact `a + b` (`a, b ≤ max_operand`) stated `repeats` times, shuffled, 3–6 to a document.
fn sum_docs(max_operand: u32, repeats: usize, rng: &mut Rng) -> Vec<TextRow> {
    let mut pairs: Vec<(u32, u32)> = (0..repeats)
        .flat_map(|_| (0..=max_operand).flat_map(|a| (0..=max_operand).map(move |b| (a, b))))
        .collect();
    rng.shuffle(&mut pairs);
    let mut docs = Vec::new();
    let mut rest = &pairs[..];
    while !rest.is_empty() {
        let (lang, n) = (lang(rng), (3 + rng.below(4)).min(rest.len()));
        let sentences: Vec<String> = rest[..n]
            .iter()
            .map(|&(a, b)| text::sum_statement(a, b, lang, rng))
            .collect();
        docs.push(TextRow {
            text: document(&sentences, lang),
        });
        rest = &rest[n..];
    }
    docs
}

fn pretrain_docs(
    world: &World,
    cfg: &GenConfig,
    rng: &mut Rng,
    bios_per_person: usize,
) -> Vec<TextRow> {
    let mut docs = Vec::new();
    for _ in 0..bios_per_person {
        for p in 0..world.people.len() {
            docs.push(TextRow {
                text: pretrain_doc(world, rng, cfg.max_operand, Some(p)),
            });
        }
    }
    // City facts: a sixth as many documents as biographies. Sums: each one `sum_repeats` times in the
    // full corpus, in proportion (at least once) in a smaller one.
    for _ in 0..docs.len() / 6 {
        let lang = lang(rng);
        docs.push(TextRow {
            text: city_doc(rng, lang),
        });
    }
    let repeats = (cfg.sum_repeats * bios_per_person / cfg.bios_per_person.max(1)).max(1);
    docs.extend(sum_docs(cfg.max_operand, repeats, rng));
    rng.shuffle(&mut docs);
    docs
}

/// Facts (person, attribute) split into the training and the held-out set.
fn facts(world: &World, held_out: bool) -> Vec<Fact> {
    let mut out = Vec::new();
    for (p, flags) in world.held_out.iter().enumerate() {
        for (i, &attr) in ATTRS.iter().enumerate() {
            if flags[i] == held_out {
                out.push(Fact { person: p, attr });
            }
        }
    }
    out
}

/// Addition problems; a pair is held out when a fixed hash of it says so.
fn sums(cfg: &GenConfig, held_out: bool) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for a in 0..=cfg.max_operand {
        for b in 0..=cfg.max_operand {
            let h = Rng::new(u64::from(a) * 1000 + u64::from(b) + cfg.seed).next_u64();
            let is_held = (h % 1000) as f64 / 1000.0 < cfg.held_out;
            if is_held == held_out {
                out.push((a, b));
            }
        }
    }
    out
}

/// A single question with its answer and the checkable value.
fn qa(
    world: &World,
    facts: &[Fact],
    sums: &[(u32, u32)],
    rng: &mut Rng,
) -> (Lang, String, String, String) {
    let lang = lang(rng);
    if rng.chance(0.12) {
        let &(a, b) = rng.pick(sums);
        let c = a + b;
        return (
            lang,
            text::sum_question(a, b, lang),
            text::sum_answer(a, b, c, lang),
            c.to_string(),
        );
    }
    let f = rng.pick(facts);
    let p = &world.people[f.person];
    (
        lang,
        text::question(p, f.attr, lang, rng),
        text::answer(p, f.attr, lang, None),
        text::value(p, f.attr, lang),
    )
}

fn sft_rows(world: &World, cfg: &GenConfig, rng: &mut Rng) -> Vec<SftRow> {
    let train = facts(world, false);
    let train_sums = sums(cfg, false);
    (0..cfg.sft_rows)
        .map(|_| {
            let mut conv = Vec::new();
            if rng.chance(0.1) {
                conv.push(msg("system", rng.pick(text::SYSTEM_PROMPTS).to_string()));
            }
            let r = rng.below(100);
            if r < 4 {
                let (q, a) = text::greeting(lang(rng), rng);
                conv.push(msg("user", q));
                conv.push(msg("assistant", a));
            } else if r < 20 {
                // Multi-turn: a named question, then follow-ups about the same person.
                let lang = lang(rng);
                let p_idx = rng.below(world.people.len());
                let p = &world.people[p_idx];
                let mut attrs: Vec<Attr> = ATTRS
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !world.held_out[p_idx][*i])
                    .map(|(_, &a)| a)
                    .collect();
                rng.shuffle(&mut attrs);
                for (turn, &attr) in attrs.iter().take(2 + rng.below(2)).enumerate() {
                    let q = if turn == 0 {
                        text::question(p, attr, lang, rng)
                    } else {
                        text::follow_up(attr, lang)
                    };
                    conv.push(msg("user", q));
                    conv.push(msg("assistant", text::answer(p, attr, lang, None)));
                }
                if conv.len() < 3 {
                    // Every attribute of this person but one is held out: fall back to one turn.
                    let (_, q, a, _) = qa(world, &train, &train_sums, rng);
                    conv.push(msg("user", q));
                    conv.push(msg("assistant", a));
                }
            } else {
                let (_, q, a, _) = qa(world, &train, &train_sums, rng);
                conv.push(msg("user", q));
                conv.push(msg("assistant", a));
            }
            SftRow {
                conversations: conv,
                answer: None,
            }
        })
        .collect()
}

fn sft_eval_rows(world: &World, cfg: &GenConfig, rng: &mut Rng) -> Vec<SftRow> {
    let held = facts(world, true);
    let held_sums = sums(cfg, true);
    (0..cfg.eval_rows)
        .map(|_| {
            let (_, q, a, v) = qa(world, &held, &held_sums, rng);
            SftRow {
                conversations: vec![msg("user", q), msg("assistant", a)],
                answer: Some(v),
            }
        })
        .collect()
}

/// A rejected reply to `(question, answer)`: a wrong value (most often), an unhelpful reply, or the
/// right answer in the wrong language.
fn rejected_for(
    world: &World,
    fact: Option<&Fact>,
    sum: Option<(u32, u32)>,
    lang: Lang,
    rng: &mut Rng,
) -> String {
    let r = rng.below(100);
    if r < 15 {
        return text::unhelpful(lang, rng);
    }
    let other = if lang == Lang::En { Lang::Zh } else { Lang::En };
    match (fact, sum) {
        (Some(f), _) => {
            let p = &world.people[f.person];
            if r < 25 {
                text::answer(p, f.attr, other, None)
            } else {
                let wrong = p.wrong_value(f.attr, rng);
                text::answer(p, f.attr, lang, Some(&wrong))
            }
        }
        (None, Some((a, b))) => {
            let c = a + b;
            let wrong = loop {
                let w = (c as i64 + rng.below(11) as i64 - 5).max(0) as u32;
                if w != c {
                    break w;
                }
            };
            text::sum_answer(a, b, wrong, lang)
        }
        (None, None) => text::unhelpful(lang, rng),
    }
}

fn dpo_rows(
    world: &World,
    cfg: &GenConfig,
    rng: &mut Rng,
    n: usize,
    held_out: bool,
    prefix: &str,
) -> Vec<DpoRow> {
    let facts = facts(world, held_out);
    let sums = sums(cfg, held_out);
    (0..n)
        .map(|i| {
            let lang = lang(rng);
            let (prompt, chosen, rejected, value) = if rng.chance(0.12) {
                let &(a, b) = rng.pick(&sums);
                let rejected = rejected_for(world, None, Some((a, b)), lang, rng);
                (
                    text::sum_question(a, b, lang),
                    text::sum_answer(a, b, a + b, lang),
                    rejected,
                    (a + b).to_string(),
                )
            } else {
                let f = rng.pick(&facts);
                let p = &world.people[f.person];
                let rejected = rejected_for(world, Some(f), None, lang, rng);
                let q = text::question(p, f.attr, lang, rng);
                (
                    q,
                    text::answer(p, f.attr, lang, None),
                    rejected,
                    text::value(p, f.attr, lang),
                )
            };
            DpoRow {
                id: format!("{prefix}-{i:05}"),
                prompt,
                chosen,
                rejected,
                answer: held_out.then_some(value),
            }
        })
        .collect()
}

fn dpo_conversation_rows(world: &World, cfg: &GenConfig, rng: &mut Rng) -> Vec<DpoConversationRow> {
    let train = facts(world, false);
    (0..cfg.dpo_conversation_rows)
        .map(|_| {
            // One answered turn about a person, then a follow-up whose answer is judged.
            let lang = lang(rng);
            let f = rng.pick(&train);
            let p = &world.people[f.person];
            let firsts: Vec<Attr> = ATTRS.iter().copied().filter(|&a| a != f.attr).collect();
            let first = *rng.pick(&firsts);
            let mut shared = vec![
                msg("user", text::question(p, first, lang, rng)),
                msg("assistant", text::answer(p, first, lang, None)),
                msg("user", text::follow_up(f.attr, lang)),
            ];
            if rng.chance(0.1) {
                shared.insert(0, msg("system", rng.pick(text::SYSTEM_PROMPTS).to_string()));
            }
            let rejected = rejected_for(world, Some(f), None, lang, rng);
            let mut chosen = shared.clone();
            chosen.push(msg("assistant", text::answer(p, f.attr, lang, None)));
            let mut rej = shared;
            rej.push(msg("assistant", rejected));
            DpoConversationRow {
                chosen,
                rejected: rej,
            }
        })
        .collect()
}

/// Generate the whole shipped dataset into `dir`; returns what each file holds.
pub fn generate(cfg: &GenConfig, dir: &Path) -> Result<Vec<FileSummary>, GenError> {
    if cfg.people == 0 || cfg.people > 288 {
        return Err(GenError::Config(format!(
            "people must be in 1..=288, got {}",
            cfg.people
        )));
    }
    std::fs::create_dir_all(dir).map_err(|source| GenError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    // Independent streams per file, so changing one file's size leaves the others unchanged.
    let world = World::new(cfg.people, cfg.held_out, &mut Rng::new(cfg.seed));
    let stream = |k: u64| Rng::new(cfg.seed.wrapping_mul(31).wrapping_add(k));
    let eval_bios = (cfg.bios_per_person / 10).max(1);
    let held_facts: Vec<(usize, Attr)> = (facts(&world, true).iter())
        .map(|f| (f.person, f.attr))
        .collect();
    Ok(vec![
        write_jsonl(
            dir,
            "pretrain.jsonl",
            &pretrain_docs(&world, cfg, &mut stream(1), cfg.bios_per_person),
        )?,
        write_jsonl(
            dir,
            "pretrain_eval.jsonl",
            &pretrain_docs(&world, cfg, &mut stream(2), eval_bios),
        )?,
        write_jsonl(dir, "sft.jsonl", &sft_rows(&world, cfg, &mut stream(3)))?,
        write_jsonl(
            dir,
            "sft_eval.jsonl",
            &sft_eval_rows(&world, cfg, &mut stream(4)),
        )?,
        write_jsonl(
            dir,
            "dpo.jsonl",
            &dpo_rows(&world, cfg, &mut stream(5), cfg.dpo_rows, false, "dpo"),
        )?,
        write_jsonl(
            dir,
            "dpo_eval.jsonl",
            &dpo_rows(&world, cfg, &mut stream(6), cfg.eval_rows, true, "eval"),
        )?,
        write_jsonl(
            dir,
            "dpo_conversations.jsonl",
            &dpo_conversation_rows(&world, cfg, &mut stream(7)),
        )?,
        write_jsonl(
            dir,
            "facts_mc_en.jsonl",
            &mc::fact_rows(&world, &held_facts, Lang::En, &mut stream(8)),
        )?,
        write_jsonl(
            dir,
            "facts_mc_zh.jsonl",
            &mc::fact_rows(&world, &held_facts, Lang::Zh, &mut stream(9)),
        )?,
        write_jsonl(
            dir,
            "sums_mc.jsonl",
            &mc::sum_rows(&sums(cfg, true), &mut stream(10)),
        )?,
    ])
}

/// Write a pretraining corpus of at least `target_bytes` (JSONL `{"text"}`) for benchmarks.
pub fn write_corpus(
    cfg: &GenConfig,
    path: &Path,
    target_bytes: u64,
) -> Result<FileSummary, GenError> {
    let io = |source| GenError::Io {
        path: path.to_path_buf(),
        source,
    };
    let world = World::new(cfg.people, cfg.held_out, &mut Rng::new(cfg.seed));
    let mut rng = Rng::new(cfg.seed.wrapping_add(99));
    let tmp = path.with_extension("tmp");
    let mut w = BufWriter::new(File::create(&tmp).map_err(io)?);
    let (mut bytes, mut rows) = (0u64, 0usize);
    while bytes < target_bytes {
        let person = rng.chance(0.75).then(|| rng.below(world.people.len()));
        let row = TextRow {
            text: pretrain_doc(&world, &mut rng, cfg.max_operand, person),
        };
        let line = serde_json::to_string(&row).map_err(|e| io(e.into()))?;
        w.write_all(line.as_bytes()).map_err(io)?;
        w.write_all(b"\n").map_err(io)?;
        bytes += line.len() as u64 + 1;
        rows += 1;
    }
    let file = w.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(FileSummary {
        name: path.display().to_string(),
        rows,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> GenConfig {
        GenConfig {
            people: 12,
            bios_per_person: 2,
            sft_rows: 50,
            dpo_rows: 40,
            dpo_conversation_rows: 10,
            eval_rows: 20,
            ..GenConfig::default()
        }
    }

    #[test]
    fn generation_is_byte_identical_for_the_same_seed() {
        let (a, b) = (tempfile_dir("a"), tempfile_dir("b"));
        generate(&small(), &a).unwrap();
        generate(&small(), &b).unwrap();
        for f in [
            "pretrain.jsonl",
            "sft.jsonl",
            "sft_eval.jsonl",
            "dpo.jsonl",
            "dpo_conversations.jsonl",
            "facts_mc_en.jsonl",
            "facts_mc_zh.jsonl",
            "sums_mc.jsonl",
        ] {
            assert_eq!(
                std::fs::read(a.join(f)).unwrap(),
                std::fs::read(b.join(f)).unwrap(),
                "{f} differs"
            );
        }
    }

    #[test]
    fn eval_answers_appear_in_the_reference_reply_and_chosen_differs_from_rejected() {
        let dir = tempfile_dir("c");
        generate(&small(), &dir).unwrap();
        for line in std::fs::read_to_string(dir.join("sft_eval.jsonl"))
            .unwrap()
            .lines()
        {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let reply = v["conversations"][1]["content"].as_str().unwrap();
            assert!(reply.contains(v["answer"].as_str().unwrap()), "{line}");
        }
        for line in std::fs::read_to_string(dir.join("dpo.jsonl"))
            .unwrap()
            .lines()
        {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_ne!(v["chosen"], v["rejected"], "{line}");
        }
    }

    #[test]
    fn multiple_choice_rows_have_four_distinct_choices_and_the_true_one_at_answer() {
        let dir = tempfile_dir("mc");
        let cfg = small();
        generate(&cfg, &dir).unwrap();
        let rows = |name: &str| -> Vec<serde_json::Value> {
            let text = std::fs::read_to_string(dir.join(name)).unwrap();
            text.lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        };
        let world = World::new(cfg.people, cfg.held_out, &mut Rng::new(cfg.seed));
        let held = facts(&world, true);
        for (name, lang) in [
            ("facts_mc_en.jsonl", Lang::En),
            ("facts_mc_zh.jsonl", Lang::Zh),
        ] {
            let r = rows(name);
            assert_eq!(r.len(), held.len(), "{name}: one row per held-out fact");
            for (row, f) in r.iter().zip(&held) {
                let choices: Vec<&str> = (row["choices"].as_array().unwrap().iter())
                    .map(|c| c.as_str().unwrap())
                    .collect();
                let mut unique = choices.clone();
                unique.sort();
                unique.dedup();
                assert_eq!(unique.len(), 4, "{row}");
                let right = text::answer(&world.people[f.person], f.attr, lang, None);
                assert_eq!(
                    choices[row["answer"].as_u64().unwrap() as usize],
                    right,
                    "{row}"
                );
            }
        }
        let sums_rows = rows("sums_mc.jsonl");
        assert_eq!(sums_rows.len(), sums(&cfg, true).len());
        for (row, (a, b)) in sums_rows.iter().zip(sums(&cfg, true)) {
            let gold = row["choices"][row["answer"].as_u64().unwrap() as usize]
                .as_str()
                .unwrap();
            let c = a + b;
            assert!(
                gold.ends_with(&format!(" {c}.")) || gold.ends_with(&format!("于{c}。")),
                "{row}"
            );
        }
    }

    /// How often `needle` occurs in `text` not right after a digit (so `1 plus 2` is not found in `11 plus 2`).
    fn occurrences(text: &str, needle: &str) -> usize {
        text.match_indices(needle)
            .filter(|(i, _)| {
                !text[..*i]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_ascii_digit())
            })
            .count()
    }

    #[test]
    fn the_pretraining_corpus_states_every_sum_sum_repeats_times() {
        let dir = tempfile_dir("sums");
        let cfg = small();
        generate(&cfg, &dir).unwrap();
        let text = std::fs::read_to_string(dir.join("pretrain.jsonl")).unwrap();
        for a in 0..=cfg.max_operand {
            for b in 0..=cfg.max_operand {
                let c = a + b;
                let n = occurrences(&text, &format!("{a} plus {b} equals {c}."))
                    + occurrences(&text, &format!("add {a} and {b}, you get {c}."))
                    + occurrences(&text, &format!("{a}加{b}等于{c}。"))
                    + occurrences(&text, &format!("{a}和{b}相加得{c}。"));
                assert_eq!(n, cfg.sum_repeats, "{a} + {b}");
            }
        }
    }

    fn tempfile_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("zerolm-datagen-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }
}

#[cfg(test)]
mod shipped {
    /// `data/` must be exactly what `make-data shipped` writes, so the shipped files stay reproducible.
    #[test]
    fn committed_data_matches_the_generator() {
        let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data");
        let out = std::env::temp_dir().join(format!("zerolm-shipped-{}", std::process::id()));
        let files = super::generate(&super::GenConfig::default(), &out).unwrap();
        for f in files {
            let want = std::fs::read(data.join(&f.name)).unwrap();
            assert!(
                std::fs::read(out.join(&f.name)).unwrap() == want,
                "data/{} differs from the generator; run `make data`",
                f.name
            );
        }
    }
}
