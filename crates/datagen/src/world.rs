//! The small bilingual world the shipped dataset talks about: people, their attributes, cities.
//!
//! Everything is drawn from a seeded SplitMix64 stream, so the same seed always yields the same world.

/// SplitMix64: tiny, fast, and identical on every platform (the dataset must be byte-reproducible).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5EED_2E80_1A4D_0001)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform integer in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// An English / Chinese pair of the same word or phrase.
pub type Bi = (&'static str, &'static str);

pub const CITIES: &[(Bi, Bi)] = &[
    (("Paris", "巴黎"), ("France", "法国")),
    (("London", "伦敦"), ("England", "英国")),
    (("Tokyo", "东京"), ("Japan", "日本")),
    (("Beijing", "北京"), ("China", "中国")),
    (("Shanghai", "上海"), ("China", "中国")),
    (("Berlin", "柏林"), ("Germany", "德国")),
    (("Rome", "罗马"), ("Italy", "意大利")),
    (("Madrid", "马德里"), ("Spain", "西班牙")),
    (("Cairo", "开罗"), ("Egypt", "埃及")),
    (("Sydney", "悉尼"), ("Australia", "澳大利亚")),
    (("Moscow", "莫斯科"), ("Russia", "俄罗斯")),
    (("Toronto", "多伦多"), ("Canada", "加拿大")),
    (("Seoul", "首尔"), ("Korea", "韩国")),
    (("Bangkok", "曼谷"), ("Thailand", "泰国")),
    (("Lima", "利马"), ("Peru", "秘鲁")),
    (("Nairobi", "内罗毕"), ("Kenya", "肯尼亚")),
];

pub const JOBS: &[Bi] = &[
    ("doctor", "医生"),
    ("teacher", "老师"),
    ("engineer", "工程师"),
    ("farmer", "农民"),
    ("painter", "画家"),
    ("pilot", "飞行员"),
    ("chef", "厨师"),
    ("writer", "作家"),
    ("nurse", "护士"),
    ("lawyer", "律师"),
    ("singer", "歌手"),
    ("baker", "面包师"),
];

pub const COLORS: &[Bi] = &[
    ("red", "红色"),
    ("blue", "蓝色"),
    ("green", "绿色"),
    ("yellow", "黄色"),
    ("purple", "紫色"),
    ("orange", "橙色"),
    ("black", "黑色"),
    ("white", "白色"),
];

pub const PETS: &[Bi] = &[
    ("cat", "猫"),
    ("dog", "狗"),
    ("parrot", "鹦鹉"),
    ("rabbit", "兔子"),
    ("goldfish", "金鱼"),
    ("turtle", "乌龟"),
    ("hamster", "仓鼠"),
];

const FIRST: &[&str] = &[
    "Alice", "Bruno", "Clara", "David", "Elena", "Felix", "Grace", "Hugo", "Irene", "Jonas",
    "Kira", "Liam", "Maya", "Nico", "Olga", "Pablo", "Quinn", "Rosa", "Samir", "Tara", "Umar",
    "Vera", "Wes", "Yuki",
];
const LAST: &[&str] = &[
    "Adams", "Baker", "Chen", "Diaz", "Evans", "Fischer", "Garcia", "Hayes", "Ito", "Jensen",
    "Khan", "Lopez", "Moreau", "Novak", "Okafor", "Park",
];
const ZH_SURNAME: &[&str] = &[
    "王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙",
];
const ZH_GIVEN: &[&str] = &[
    "伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "涛", "明", "超",
    "秀英", "佳怡", "子涵", "浩然", "雨萱", "志强", "晓东", "思远",
];

/// The attributes a question can ask about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attr {
    City,
    Job,
    Color,
    Pet,
    Age,
}

pub const ATTRS: [Attr; 5] = [Attr::City, Attr::Job, Attr::Color, Attr::Pet, Attr::Age];

#[derive(Debug, Clone)]
pub struct Person {
    pub en: String,
    pub zh: String,
    pub city: usize,
    pub job: usize,
    pub color: usize,
    pub pet: usize,
    pub age: u32,
}

impl Person {
    /// The attribute's value as (English, Chinese) text.
    pub fn value(&self, attr: Attr) -> (String, String) {
        match attr {
            Attr::City => (CITIES[self.city].0 .0.into(), CITIES[self.city].0 .1.into()),
            Attr::Job => (JOBS[self.job].0.into(), JOBS[self.job].1.into()),
            Attr::Color => (COLORS[self.color].0.into(), COLORS[self.color].1.into()),
            Attr::Pet => (PETS[self.pet].0.into(), PETS[self.pet].1.into()),
            Attr::Age => (self.age.to_string(), self.age.to_string()),
        }
    }

    /// A different, wrong value for the same attribute (for rejected answers).
    pub fn wrong_value(&self, attr: Attr, rng: &mut Rng) -> (String, String) {
        let mut other = self.clone();
        loop {
            match attr {
                Attr::City => other.city = rng.below(CITIES.len()),
                Attr::Job => other.job = rng.below(JOBS.len()),
                Attr::Color => other.color = rng.below(COLORS.len()),
                Attr::Pet => other.pet = rng.below(PETS.len()),
                Attr::Age => other.age = 18 + rng.below(60) as u32,
            }
            if other.value(attr) != self.value(attr) {
                return other.value(attr);
            }
        }
    }
}

/// The whole world: people plus which (person, attribute) facts are held out of SFT/DPO training.
#[derive(Debug, Clone)]
pub struct World {
    pub people: Vec<Person>,
    /// `held_out[p][a]`: the fact is stated in pretraining but only asked about in the eval splits.
    pub held_out: Vec<[bool; 5]>,
}

impl World {
    pub fn new(n_people: usize, held_out_fraction: f64, rng: &mut Rng) -> World {
        let mut en_names: Vec<String> = FIRST
            .iter()
            .flat_map(|f| LAST.iter().map(move |l| format!("{f} {l}")))
            .collect();
        let mut zh_names: Vec<String> = ZH_SURNAME
            .iter()
            .flat_map(|s| ZH_GIVEN.iter().map(move |g| format!("{s}{g}")))
            .collect();
        rng.shuffle(&mut en_names);
        rng.shuffle(&mut zh_names);
        assert!(
            n_people <= en_names.len().min(zh_names.len()),
            "too many people requested"
        );
        let people: Vec<Person> = (0..n_people)
            .map(|i| Person {
                en: en_names[i].clone(),
                zh: zh_names[i].clone(),
                city: rng.below(CITIES.len()),
                job: rng.below(JOBS.len()),
                color: rng.below(COLORS.len()),
                pet: rng.below(PETS.len()),
                age: 18 + rng.below(60) as u32,
            })
            .collect();
        let held_out = (0..n_people)
            .map(|_| std::array::from_fn(|_| rng.chance(held_out_fraction)))
            .collect();
        World { people, held_out }
    }
}
