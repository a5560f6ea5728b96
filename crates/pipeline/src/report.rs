//! `pipeline report`: one self-contained HTML page (inline SVG plots) plus `summary.md` and one SVG per
//! plot, from a run directory's lock (which stages ran, how long) and the training stages' `metrics.jsonl`
//! (pretrain/SFT loss and eval loss, DPO loss, reward margins and accuracies, held-out answer checks).

use crate::error::{PipelineError, Result};
use crate::evals::{self, EvalTable};
use crate::lockfile::LockFile;
use crate::spec::Pipeline;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// One finished stage as the report sees it.
#[derive(Debug, Clone)]
pub struct StageRecord {
    pub name: String,
    /// The binary's name (`pretrain`, `sft`, `dpo`, …).
    pub kind: String,
    /// Its `--out`, resolved.
    pub out: Option<PathBuf>,
    pub wall_s: f64,
    pub finished_unix: u64,
    pub rows: Vec<Map<String, Value>>,
}

/// `pipeline report`: the report of `target` (a run directory, or a pipeline file for its run
/// directory) written into `out` (default: `RUN_DIR/report`).
pub fn generate(target: &Path, out: Option<PathBuf>) -> Result<Report> {
    let (run_dir, title) = run_dir_and_title(target)?;
    let records = load_records(&run_dir)?;
    let out = out.unwrap_or_else(|| run_dir.join("report"));
    write(&records, &out, &title)
}

/// The run directory `target` names (itself, or a pipeline file's) and the report's title.
fn run_dir_and_title(target: &Path) -> Result<(PathBuf, String)> {
    if target.is_dir() {
        return Ok((
            target.to_path_buf(),
            format!("zerolm run {}", target.display()),
        ));
    }
    let p = Pipeline::load(target, &[])?;
    Ok((p.run_dir, format!("zerolm pipeline {}", target.display())))
}

/// The finished stages of the run directory `run_dir`, in run order.
pub fn load_records(run_dir: &Path) -> Result<Vec<StageRecord>> {
    let path = LockFile::path(run_dir);
    if !path.is_file() {
        return Err(PipelineError::Usage(format!(
            "{}: no lock file; run the pipeline first (`pipeline run FILE`) or name its run directory",
            path.display()
        )));
    }
    let lock = LockFile::load(run_dir, "")?;
    let dir = PathBuf::from(&lock.dir);
    let mut names: Vec<String> = lock
        .order
        .iter()
        .filter(|n| lock.stages.contains_key(*n))
        .cloned()
        .collect();
    for n in lock.stages.keys() {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    let mut out = Vec::new();
    for name in names {
        let e = &lock.stages[&name];
        let kind = Path::new(&e.program)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let out_dir = e
            .argv
            .windows(2)
            .find(|w| w[0] == "--out")
            .map(|w| crate::spec::normalize(&dir.join(&w[1])));
        let rows = out_dir
            .as_ref()
            .map(|d| zerolm_io::read_rows(&d.join("metrics.jsonl")))
            .unwrap_or_default();
        out.push(StageRecord {
            name,
            kind,
            out: out_dir,
            wall_s: e.wall_s,
            finished_unix: e.finished_unix,
            rows,
        });
    }
    Ok(out)
}

/// (step, value) of every row holding `key`.
fn series(rows: &[Map<String, Value>], key: &str) -> Vec<(f64, f64)> {
    rows.iter()
        .filter_map(|r| {
            let v = r.get(key)?.as_f64()?;
            let s = r.get("step")?.as_f64()?;
            v.is_finite().then_some((s, v))
        })
        .collect()
}

fn first_last(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    Some((points.first()?.1, points.last()?.1))
}

/// `42.0% (168/400)` from a probe row.
fn answers(row: &Map<String, Value>) -> Option<String> {
    let c = row.get("probe_answer_correct")?.as_u64()?;
    let t = row.get("probe_answer_total")?.as_u64()?;
    let pct = if t == 0 {
        0.0
    } else {
        100.0 * c as f64 / t as f64
    };
    Some(format!("{pct:.1}% ({c}/{t})"))
}

fn probes(r: &StageRecord) -> Vec<&Map<String, Value>> {
    r.rows
        .iter()
        .filter(|row| row.contains_key("probe_answer_total"))
        .collect()
}

/// The summary rows: (what, value).
pub fn summary_rows(records: &[StageRecord]) -> Vec<(String, String)> {
    let by = |kind: &str| records.iter().rev().find(|r| r.kind == kind);
    let (pre, sft, dpo) = (by("pretrain"), by("sft"), by("dpo"));
    // `label: first → last` of a curve, when the stage logged it.
    let curve = |r: Option<&StageRecord>, key: &str, label: &str, digits: usize| {
        let (a, b) = first_last(&series(&r?.rows, key))?;
        Some((label.to_string(), format!("{a:.digits$} → {b:.digits$}")))
    };
    // Each stage checks its own held-out questions before and after it trains: SFT's first check is
    // the pretrained model, DPO's first check is the SFT model (on DPO's questions).
    let before_after = |r: Option<&StageRecord>, label: &str| {
        let p = probes(r?);
        let v = format!("{} → {}", answers(p.first()?)?, answers(p.last()?)?);
        Some((label.to_string(), v))
    };
    [
        curve(pre, "eval_loss", "pretrain eval loss, start → end", 3),
        curve(sft, "eval_loss", "SFT eval loss, start → end", 3),
        before_after(
            sft,
            "held-out answer accuracy (SFT's questions), after pretrain → after SFT",
        ),
        before_after(
            dpo,
            "held-out answer accuracy (DPO's questions), after SFT → after DPO",
        ),
        curve(
            dpo,
            "eval_rewards/accuracies",
            "held-out preference accuracy (eval_rewards/accuracies), before → after DPO",
            3,
        ),
        curve(
            dpo,
            "eval_rewards/margins",
            "held-out reward margin (eval_rewards/margins), before → after DPO",
            3,
        ),
        curve(dpo, "eval_loss", "DPO eval loss, start → end", 4),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The plots: (file stem, title, series).
type Plot = (String, String, Vec<(String, Vec<(f64, f64)>)>);

fn plots(records: &[StageRecord]) -> Vec<Plot> {
    let mut out = Vec::new();
    for r in records.iter().filter(|r| !r.rows.is_empty()) {
        let mut groups = vec![("loss", "loss")];
        if r.rows.iter().any(|row| row.contains_key("rewards/margins")) {
            groups.push(("rewards/margins", "reward margin"));
            groups.push(("rewards/accuracies", "reward accuracy"));
        }
        for (key, title) in groups {
            let mut s = Vec::new();
            for (k, label) in [
                (key.to_string(), "train"),
                (format!("eval_{key}"), "held-out"),
            ] {
                let pts = series(&r.rows, &k);
                if !pts.is_empty() {
                    s.push((format!("{label} {key}"), pts));
                }
            }
            if !s.is_empty() {
                out.push((
                    format!("{}-{}", r.name, key.replace('/', "-")),
                    format!("{} — {title}", r.name),
                    s,
                ));
            }
        }
    }
    out
}

const COLOURS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

fn tick(v: f64) -> String {
    if (v == v.trunc() && v.abs() < 1e7) || v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The chart's canvas size.
const W: f64 = 640.0;
const H: f64 = 340.0;
/// The edges of the chart's plot area.
const LEFT: f64 = 64.0;
const RIGHT: f64 = 620.0;
const TOP: f64 = 36.0;
const BOTTOM: f64 = 280.0;

/// Maps data points into the plot area: the range of the data, the y range padded by 5%.
struct Scale {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
}

impl Scale {
    fn of(series: &[(String, Vec<(f64, f64)>)]) -> Scale {
        let pts = series.iter().flat_map(|(_, p)| p.iter());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in pts {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        if y1 <= y0 {
            y0 -= 0.5;
            y1 += 0.5;
        }
        let pad = (y1 - y0) * 0.05;
        Scale {
            x0,
            x1,
            y0: y0 - pad,
            y1: y1 + pad,
        }
    }

    fn x(&self, x: f64) -> f64 {
        LEFT + (x - self.x0) / (self.x1 - self.x0) * (RIGHT - LEFT)
    }

    fn y(&self, y: f64) -> f64 {
        BOTTOM - (y - self.y0) / (self.y1 - self.y0) * (BOTTOM - TOP)
    }
}

/// A line chart as standalone SVG.
pub fn svg_chart(title: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
    let scale = Scale::of(series);
    let mut s = svg_frame(title);
    s.push_str(&svg_axes(&scale));
    for (k, (label, p)) in series.iter().enumerate() {
        s.push_str(&svg_series(&scale, k, label, p));
    }
    s.push_str("</svg>\n");
    s
}

/// The opening `<svg>`, the background, the title and the plot area's border.
fn svg_frame(title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"{W}\" height=\"{H}\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"20\" font-size=\"14\" text-anchor=\"middle\">{}</text>\n\
         <rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#999\"/>\n",
        W / 2.0,
        xml(title),
        RIGHT - LEFT,
        BOTTOM - TOP
    )
}

/// Five grid lines with their y ticks, five x ticks, and the x axis label.
fn svg_axes(scale: &Scale) -> String {
    let mut s = String::new();
    for k in 0..=4 {
        let f = k as f64 / 4.0;
        let (xv, yv) = (
            scale.x0 + f * (scale.x1 - scale.x0),
            scale.y0 + f * (scale.y1 - scale.y0),
        );
        s.push_str(&format!(
            "<line x1=\"{LEFT}\" x2=\"{RIGHT}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\
             <text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{xv:.0}</text>\n",
            LEFT - 4.0,
            scale.y(yv) + 4.0,
            tick(yv),
            BOTTOM + 16.0,
            y = scale.y(yv),
            x = scale.x(xv),
        ));
    }
    s.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">step</text>\n",
        (LEFT + RIGHT) / 2.0,
        BOTTOM + 30.0
    ));
    s
}

/// Series `k`: its line, its points (when there are few), and its entry in the legend row.
fn svg_series(scale: &Scale, k: usize, label: &str, p: &[(f64, f64)]) -> String {
    let c = COLOURS[k % COLOURS.len()];
    let line: Vec<String> = p
        .iter()
        .map(|&(x, y)| format!("{:.1},{:.1}", scale.x(x), scale.y(y)))
        .collect();
    let mut s = format!(
        "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"1.5\" points=\"{}\"/>\n",
        line.join(" ")
    );
    if p.len() <= 40 {
        for &(x, y) in p {
            s.push_str(&format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{c}\"/>",
                scale.x(x),
                scale.y(y)
            ));
        }
        s.push('\n');
    }
    // The legend: one row under the axis.
    let (lx, ly) = (LEFT + 200.0 * k as f64, H - 10.0);
    s.push_str(&format!(
        "<line x1=\"{lx}\" x2=\"{}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{c}\" stroke-width=\"2\"/><text x=\"{}\" y=\"{}\">{}</text>\n",
        lx + 20.0,
        lx + 24.0,
        ly + 4.0,
        xml(label)
    ));
    s
}

/// `2026-11-28 16:06 UTC` from unix seconds.
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

/// What `write` produced.
#[derive(Debug)]
pub struct Report {
    pub dir: PathBuf,
    pub markdown: String,
    pub final_model: Option<PathBuf>,
}

/// Writes the report for `records` into `out` (replaced whole: built beside it, then renamed).
pub fn write(records: &[StageRecord], out: &Path, title: &str) -> Result<Report> {
    let summary = summary_rows(records);
    let final_model = final_model(records);
    let evals = evals::table(&eval_stages(records))?;
    let md = markdown(
        title,
        &summary,
        evals.as_ref(),
        records,
        final_model.as_deref(),
    );
    let mut files: Vec<(String, String)> = plots(records)
        .iter()
        .map(|(stem, title, s)| (format!("{stem}.svg"), svg_chart(title, s)))
        .collect();
    let html = html(
        title,
        &summary,
        evals.as_ref(),
        records,
        final_model.as_deref(),
        &files,
    );
    files.push(("index.html".into(), html));
    files.push(("summary.md".into(), md.clone()));
    replace_dir(out, &files)?;
    Ok(Report {
        dir: out.to_path_buf(),
        markdown: md,
        final_model,
    })
}

/// Every `eval` stage that wrote results: (stage name, results file).
fn eval_stages(records: &[StageRecord]) -> Vec<(String, PathBuf)> {
    (records.iter())
        .filter(|r| r.kind == "eval")
        .filter_map(|r| Some((r.name.clone(), r.out.clone()?)))
        .collect()
}

/// The `model` directory of the last training stage that wrote one.
fn final_model(records: &[StageRecord]) -> Option<PathBuf> {
    records
        .iter()
        .rev()
        .filter(|r| matches!(r.kind.as_str(), "pretrain" | "sft" | "dpo"))
        .find_map(|r| r.out.as_ref().map(|o| o.join("model")))
        .filter(|m| m.is_dir())
}

fn total_wall_s(records: &[StageRecord]) -> f64 {
    records.iter().map(|r| r.wall_s).sum()
}

/// `summary.md`: the summary table, the stages' wall times, the final model.
fn markdown(
    title: &str,
    summary: &[(String, String)],
    evals: Option<&EvalTable>,
    records: &[StageRecord],
    final_model: Option<&Path>,
) -> String {
    let mut md = format!("# {title}\n\n| | |\n|---|---|\n");
    for (k, v) in summary {
        md.push_str(&format!("| {k} | {v} |\n"));
    }
    if let Some(t) = evals {
        md.push_str(&format!(
            "\n## Evaluations\n\n| task · metric | {} |\n|---|",
            t.columns.join(" | ")
        ));
        md.push_str(&"---:|".repeat(t.columns.len()));
        for (row, cells) in &t.rows {
            md.push_str(&format!("\n| {row} | {} |", cells.join(" | ")));
        }
        md.push('\n');
    }
    md.push_str("\n| stage | wall time | finished |\n|---|---:|---|\n");
    for r in records {
        md.push_str(&format!(
            "| {} | {:.1} s | {} |\n",
            r.name,
            r.wall_s,
            utc(r.finished_unix)
        ));
    }
    md.push_str(&format!("| total | {:.1} s | |\n", total_wall_s(records)));
    if let Some(m) = final_model {
        md.push_str(&format!("\nFinal model: `{}`\n", m.display()));
    }
    md
}

/// `index.html`: the tables of `markdown`, then the charts (`svgs`: file name, SVG) inline.
fn html(
    title: &str,
    summary: &[(String, String)],
    evals: Option<&EvalTable>,
    records: &[StageRecord],
    final_model: Option<&Path>,
    svgs: &[(String, String)],
) -> String {
    let mut html = html_head(title);
    html.push_str(&html_summary(summary));
    if let Some(t) = evals {
        html.push_str(&html_evals(t));
    }
    html.push_str(&html_stages(records));
    if let Some(m) = final_model {
        html.push_str(&format!(
            "<p>Final model: <code>{}</code></p>\n",
            xml(&m.display().to_string())
        ));
    }
    html.push_str("<h2>Curves</h2>\n<div class=\"plots\">\n");
    for (_, svg) in svgs {
        html.push_str(svg);
    }
    html.push_str("</div>\n</body></html>\n");
    html
}

fn html_head(title: &str) -> String {
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title><style>\
         body{{font-family:sans-serif;max-width:1320px;margin:24px auto;color:#222}}\
         table{{border-collapse:collapse;margin:12px 0}}td,th{{border:1px solid #ccc;padding:4px 10px;text-align:left}}\
         .plots{{display:flex;flex-wrap:wrap;gap:12px}}</style></head><body>\n<h1>{t}</h1>\n",
        t = xml(title)
    )
}

fn html_summary(summary: &[(String, String)]) -> String {
    let mut html = String::from("<h2>Summary</h2>\n<table>\n");
    for (k, v) in summary {
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td></tr>\n",
            xml(k),
            xml(v)
        ));
    }
    html.push_str("</table>\n");
    html
}

fn html_evals(t: &EvalTable) -> String {
    let mut html = String::from("<h2>Evaluations</h2>\n<table><tr><th>task · metric</th>");
    for c in &t.columns {
        html.push_str(&format!("<th>{}</th>", xml(c)));
    }
    html.push_str("</tr>\n");
    for (row, cells) in &t.rows {
        html.push_str(&format!("<tr><td>{}</td>", xml(row)));
        for c in cells {
            html.push_str(&format!("<td>{}</td>", xml(c)));
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</table>\n");
    html
}

fn html_stages(records: &[StageRecord]) -> String {
    let mut html = String::from(
        "<h2>Stages</h2>\n<table><tr><th>stage</th><th>wall time</th><th>finished</th></tr>\n",
    );
    for r in records {
        html.push_str(&format!(
            "<tr><td>{}</td><td>{:.1} s</td><td>{}</td></tr>\n",
            xml(&r.name),
            r.wall_s,
            utc(r.finished_unix)
        ));
    }
    html.push_str(&format!(
        "<tr><th>total</th><th>{:.1} s</th><th></th></tr></table>\n",
        total_wall_s(records)
    ));
    html
}

/// Writes `files` (name, text) into a fresh directory beside `out`, then puts it in `out`'s place.
fn replace_dir(out: &Path, files: &[(String, String)]) -> Result<()> {
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| PipelineError::write(&tmp, e))?;
    for (name, text) in files {
        zerolm_io::write_atomically(&tmp.join(name), text.as_bytes())?;
    }
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| PipelineError::write(out, e))?;
    }
    std::fs::rename(&tmp, out).map_err(|e| PipelineError::write(out, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn summary_reads_the_curves_and_answer_checks() {
        use serde_json::json;
        let rec = |name: &str, rows: Vec<Value>| StageRecord {
            name: name.into(),
            kind: name.into(),
            out: None,
            wall_s: 2.0,
            finished_unix: 0,
            rows: rows.into_iter().map(row).collect(),
        };
        let records = vec![
            rec(
                "pretrain",
                vec![
                    json!({"step": 0, "eval_loss": 8.0}),
                    json!({"step": 10, "loss": 3.0}),
                    json!({"step": 10, "eval_loss": 2.5}),
                ],
            ),
            rec(
                "sft",
                vec![
                    json!({"step": 0, "probe_answer_correct": 0, "probe_answer_total": 4}),
                    json!({"step": 5, "probe_answer_correct": 1, "probe_answer_total": 4}),
                ],
            ),
            rec(
                "dpo",
                vec![
                    json!({"step": 0, "eval_rewards/accuracies": 0.0, "eval_rewards/margins": 0.0, "probe_answer_correct": 1, "probe_answer_total": 4}),
                    json!({"step": 3, "rewards/margins": 0.5, "rewards/accuracies": 1.0}),
                    json!({"step": 3, "eval_rewards/accuracies": 0.75, "eval_rewards/margins": 0.25, "probe_answer_correct": 2, "probe_answer_total": 4}),
                ],
            ),
        ];
        let rows = summary_rows(&records);
        let get = |k: &str| {
            rows.iter()
                .find(|(a, _)| a.starts_with(k))
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("pretrain eval loss").unwrap(), "8.000 → 2.500");
        assert_eq!(
            get("held-out answer accuracy (SFT's questions)").unwrap(),
            "0.0% (0/4) → 25.0% (1/4)"
        );
        assert_eq!(
            get("held-out answer accuracy (DPO's questions)").unwrap(),
            "25.0% (1/4) → 50.0% (2/4)"
        );
        assert_eq!(
            get("held-out preference accuracy").unwrap(),
            "0.000 → 0.750"
        );
        let p = plots(&records);
        let names: Vec<&str> = p.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "pretrain-loss",
                "dpo-rewards-margins",
                "dpo-rewards-accuracies"
            ]
        );
        let svg = svg_chart(&p[0].1, &p[0].2);
        assert!(svg.contains("<polyline") && svg.contains("held-out loss"));
        let dir = tempfile::tempdir().unwrap();
        let r = write(&records, &dir.path().join("report"), "t").unwrap();
        assert!(r.dir.join("index.html").is_file());
        assert!(r.dir.join("dpo-rewards-accuracies.svg").is_file());
        assert!(r.markdown.contains("| total | 6.0 s | |"));
        assert_eq!(utc(1_796_486_400), "2026-12-05 16:00 UTC");
    }
}
