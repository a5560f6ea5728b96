//! Sentence, question and answer templates, in English and Chinese, for the facts of [`crate::world`].

use crate::world::{Attr, Person, Rng, CITIES};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Zh,
}

/// `a` or `an` before an English noun.
fn article(word: &str) -> &'static str {
    match word.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => "an",
        _ => "a",
    }
}

fn fill(template: &str, name: &str, value: &str) -> String {
    template
        .replace("{n}", name)
        .replace("{a}", article(value))
        .replace("{v}", value)
}

fn name_value(
    p: &Person,
    attr: Attr,
    lang: Lang,
    value: Option<&(String, String)>,
) -> (String, String) {
    let v = value.cloned().unwrap_or_else(|| p.value(attr));
    match lang {
        Lang::En => (p.en.clone(), v.0),
        Lang::Zh => (p.zh.clone(), v.1),
    }
}

/// Declarative sentences stating a fact, used in the pretraining corpus.
fn statements(attr: Attr, lang: Lang) -> &'static [&'static str] {
    match (attr, lang) {
        (Attr::City, Lang::En) => &[
            "{n} lives in {v}.",
            "{n} has lived in {v} for many years.",
            "The home of {n} is in {v}.",
        ],
        (Attr::City, Lang::Zh) => &["{n}住在{v}。", "{n}在{v}生活了很多年。", "{n}的家在{v}。"],
        (Attr::Job, Lang::En) => &[
            "{n} is {a} {v}.",
            "{n} works as {a} {v}.",
            "By profession, {n} is {a} {v}.",
        ],
        (Attr::Job, Lang::Zh) => &["{n}是一名{v}。", "{n}的工作是{v}。", "{n}做{v}这份工作。"],
        (Attr::Color, Lang::En) => &[
            "{n}'s favorite color is {v}.",
            "{n} likes {v} more than any other color.",
            "Of all colors, {n} loves {v} the most.",
        ],
        (Attr::Color, Lang::Zh) => &["{n}最喜欢的颜色是{v}。", "在所有颜色中，{n}最喜欢{v}。"],
        (Attr::Pet, Lang::En) => &[
            "{n} has a pet {v}.",
            "{n} keeps {a} {v} at home.",
            "At home, {n} takes care of {a} {v}.",
        ],
        (Attr::Pet, Lang::Zh) => &["{n}养了一只{v}。", "{n}家里有一只{v}。"],
        (Attr::Age, Lang::En) => &["{n} is {v} years old.", "{n} turned {v} this year."],
        (Attr::Age, Lang::Zh) => &["{n}今年{v}岁。", "{n}已经{v}岁了。"],
    }
}

/// Questions asking for a fact, naming the person.
fn questions(attr: Attr, lang: Lang) -> &'static [&'static str] {
    match (attr, lang) {
        (Attr::City, Lang::En) => &["Where does {n} live?", "Which city does {n} live in?"],
        (Attr::City, Lang::Zh) => &["{n}住在哪里？", "{n}住在哪个城市？"],
        (Attr::Job, Lang::En) => &["What does {n} do for a living?", "What is {n}'s job?"],
        (Attr::Job, Lang::Zh) => &["{n}是做什么工作的？", "{n}的职业是什么？"],
        (Attr::Color, Lang::En) => &[
            "What is {n}'s favorite color?",
            "Which color does {n} like best?",
        ],
        (Attr::Color, Lang::Zh) => &["{n}最喜欢什么颜色？", "{n}最喜欢的颜色是什么？"],
        (Attr::Pet, Lang::En) => &["What pet does {n} have?", "What kind of pet does {n} keep?"],
        (Attr::Pet, Lang::Zh) => &["{n}养了什么宠物？", "{n}家里有什么宠物？"],
        (Attr::Age, Lang::En) => &["How old is {n}?", "What is {n}'s age?"],
        (Attr::Age, Lang::Zh) => &["{n}今年多大？", "{n}几岁了？"],
    }
}

/// Follow-up questions in a multi-turn chat: the person is the one talked about before.
fn follow_ups(attr: Attr, lang: Lang) -> &'static str {
    match (attr, lang) {
        (Attr::City, Lang::En) => "And where does this person live?",
        (Attr::City, Lang::Zh) => "那这个人住在哪里？",
        (Attr::Job, Lang::En) => "What about this person's job?",
        (Attr::Job, Lang::Zh) => "这个人是做什么工作的？",
        (Attr::Color, Lang::En) => "And what is this person's favorite color?",
        (Attr::Color, Lang::Zh) => "那这个人最喜欢什么颜色？",
        (Attr::Pet, Lang::En) => "Does this person have a pet? Which one?",
        (Attr::Pet, Lang::Zh) => "这个人养了什么宠物？",
        (Attr::Age, Lang::En) => "And how old is this person?",
        (Attr::Age, Lang::Zh) => "那这个人今年多大？",
    }
}

/// A sentence stating the fact (optionally with a substituted, possibly wrong, value).
pub fn statement(
    p: &Person,
    attr: Attr,
    lang: Lang,
    rng: &mut Rng,
    value: Option<&(String, String)>,
) -> String {
    let (n, v) = name_value(p, attr, lang, value);
    fill(*rng.pick(statements(attr, lang)), &n, &v)
}

/// The canonical answer sentence (always the first statement template, so answers are predictable).
pub fn answer(p: &Person, attr: Attr, lang: Lang, value: Option<&(String, String)>) -> String {
    let (n, v) = name_value(p, attr, lang, value);
    fill(statements(attr, lang)[0], &n, &v)
}

pub fn question(p: &Person, attr: Attr, lang: Lang, rng: &mut Rng) -> String {
    let (n, v) = name_value(p, attr, lang, None);
    fill(*rng.pick(questions(attr, lang)), &n, &v)
}

pub fn follow_up(attr: Attr, lang: Lang) -> String {
    follow_ups(attr, lang).to_string()
}

/// The value alone, as the answer checker looks for it in a generated reply.
pub fn value(p: &Person, attr: Attr, lang: Lang) -> String {
    name_value(p, attr, lang, None).1
}

pub fn city_country(city: usize, lang: Lang) -> String {
    let ((c_en, c_zh), (k_en, k_zh)) = CITIES[city];
    match lang {
        Lang::En => format!("{c_en} is a city in {k_en}."),
        Lang::Zh => format!("{c_zh}是{k_zh}的一座城市。"),
    }
}

pub fn sum_statement(a: u32, b: u32, lang: Lang, rng: &mut Rng) -> String {
    let c = a + b;
    match (lang, rng.below(2)) {
        (Lang::En, 0) => format!("{a} plus {b} equals {c}."),
        (Lang::En, _) => format!("If you add {a} and {b}, you get {c}."),
        (Lang::Zh, 0) => format!("{a}加{b}等于{c}。"),
        (Lang::Zh, _) => format!("{a}和{b}相加得{c}。"),
    }
}

pub fn sum_question(a: u32, b: u32, lang: Lang) -> String {
    match lang {
        Lang::En => format!("What is {a} plus {b}?"),
        Lang::Zh => format!("{a}加{b}等于多少？"),
    }
}

pub fn sum_answer(a: u32, b: u32, c: u32, lang: Lang) -> String {
    match lang {
        Lang::En => format!("{a} plus {b} equals {c}."),
        Lang::Zh => format!("{a}加{b}等于{c}。"),
    }
}

/// An unhelpful reply (a rejected answer that is not wrong, just useless).
pub fn unhelpful(lang: Lang, rng: &mut Rng) -> String {
    match lang {
        Lang::En => rng
            .pick(&["I don't know.", "I cannot answer that.", "Why do you ask?"])
            .to_string(),
        Lang::Zh => rng
            .pick(&["我不知道。", "我无法回答这个问题。", "你为什么要问这个？"])
            .to_string(),
    }
}

pub fn greeting(lang: Lang, rng: &mut Rng) -> (String, String) {
    match lang {
        Lang::En => (
            rng.pick(&["Hello!", "Hi there.", "Good morning!"]).to_string(),
            "Hello! I can answer questions about people, cities and sums. What would you like to know?"
                .to_string(),
        ),
        Lang::Zh => (
            rng.pick(&["你好！", "您好。", "早上好！"]).to_string(),
            "你好！我可以回答关于人物、城市和加法的问题。你想知道什么？".to_string(),
        ),
    }
}

pub const SYSTEM_PROMPTS: &[&str] = &[
    "You are a helpful assistant.",
    "You are a concise assistant that answers factual questions.",
    "你是一个乐于助人的助手。",
];
