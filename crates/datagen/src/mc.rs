//! Multiple-choice eval sets: the held-out facts (in English and in Chinese) and the held-out sums,
//! each asked with four choices, in the `{"question", "choices", "answer"}` rows `eval` reads.

use serde::Serialize;

use crate::text::{self, Lang};
use crate::world::{Attr, Rng, World};

/// One question, its choices (whole answer sentences) and the index of the right one.
#[derive(Serialize)]
pub struct McRow {
    question: String,
    choices: Vec<String>,
    answer: usize,
}

/// The question as the context the choices follow.
fn ask(question: &str, lang: Lang) -> String {
    match lang {
        Lang::En => format!("Question: {question}\nAnswer:"),
        Lang::Zh => format!("问题：{question}\n答案："),
    }
}

/// `right` and `wrong` in an order drawn from `rng`, and where `right` ended up.
fn shuffled(right: String, wrong: Vec<String>, rng: &mut Rng) -> (Vec<String>, usize) {
    let mut order: Vec<usize> = (0..=wrong.len()).collect();
    rng.shuffle(&mut order);
    let all: Vec<String> = std::iter::once(right).chain(wrong).collect();
    let gold = order
        .iter()
        .position(|&i| i == 0)
        .expect("the right choice is in the order");
    (order.into_iter().map(|i| all[i].clone()).collect(), gold)
}

/// One row per fact `(person, attribute)`: the answer sentence with the true value and with three
/// other values of the same attribute.
pub fn fact_rows(world: &World, facts: &[(usize, Attr)], lang: Lang, rng: &mut Rng) -> Vec<McRow> {
    facts
        .iter()
        .map(|&(person, attr)| {
            let p = &world.people[person];
            let question = ask(&text::question(p, attr, lang, rng), lang);
            let mut values = vec![p.value(attr)];
            while values.len() < 4 {
                let v = p.wrong_value(attr, rng);
                if !values.contains(&v) {
                    values.push(v);
                }
            }
            let sentences: Vec<String> = (values.iter())
                .map(|v| text::answer(p, attr, lang, Some(v)))
                .collect();
            let (choices, answer) = shuffled(sentences[0].clone(), sentences[1..].to_vec(), rng);
            McRow {
                question,
                choices,
                answer,
            }
        })
        .collect()
}

/// One row per sum `a + b` (English or Chinese at random): the sum sentence with the true total and
/// with three totals off by 1 to 5.
pub fn sum_rows(sums: &[(u32, u32)], rng: &mut Rng) -> Vec<McRow> {
    sums.iter()
        .map(|&(a, b)| {
            let lang = if rng.chance(0.5) { Lang::En } else { Lang::Zh };
            let c = a + b;
            let mut totals = vec![c];
            while totals.len() < 4 {
                let w = (i64::from(c) + rng.below(11) as i64 - 5).max(0) as u32;
                if !totals.contains(&w) {
                    totals.push(w);
                }
            }
            let sentences: Vec<String> = (totals.iter())
                .map(|&t| text::sum_answer(a, b, t, lang))
                .collect();
            let (choices, answer) = shuffled(sentences[0].clone(), sentences[1..].to_vec(), rng);
            McRow {
                question: ask(&text::sum_question(a, b, lang), lang),
                choices,
                answer,
            }
        })
        .collect()
}
