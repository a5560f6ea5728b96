//! `serve-load`: a bounded load test against a running `serve` — concurrent streaming chat clients,
//! time to first token, aggregate tokens/s, the server's memory over the run. Logic in
//! `zerolm_serve::load`. Exits 1 when any request failed.

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use zerolm_serve::load::{self, LoadPlan, LoadReport};

#[derive(Parser)]
#[command(
    about = "Load-test a running zerolm serve with concurrent streaming chat clients",
    version
)]
struct Cli {
    /// The server, e.g. http://127.0.0.1:8000
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// Clients streaming at once, each sending its next request when the last one ends.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Requests in all.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Decode every request to `--max-tokens` (past the end of turn).
    #[arg(long)]
    ignore_eos: bool,
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn run(cli: Cli) -> Result<()> {
    if cli.clients == 0 || cli.requests == 0 {
        return Err(
            zerolm_cli::UsageError("--clients and --requests must be at least 1".into()).into(),
        );
    }
    let plan = LoadPlan {
        url: cli.url.trim_end_matches('/').to_string(),
        clients: cli.clients,
        requests: cli.requests,
        max_tokens: cli.max_tokens,
        ignore_eos: cli.ignore_eos,
        temperature: cli.temperature,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = runtime.block_on(load::run(plan));
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    if report.failed > 0 {
        return Err(zerolm_cli::UsageError(format!(
            "{} of {} requests failed, e.g. {}",
            report.failed,
            report.requests,
            report.failures.first().map_or("", |s| s.as_str())
        ))
        .into());
    }
    Ok(())
}

fn print_table(r: &LoadReport) {
    let mb = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1} MB"));
    println!("| measure | value |\n|---|---:|");
    println!("| clients × requests | {} × {} |", r.clients, r.requests);
    println!("| ok / failed | {} / {} |", r.ok, r.failed);
    println!("| wall | {:.1} s |", r.wall_s);
    println!("| completion tokens | {} |", r.completion_tokens);
    println!("| aggregate tokens/s | {:.0} |", r.aggregate_tokens_per_s);
    println!(
        "| tokens/s per stream (median) | {:.0} |",
        r.per_stream_tokens_per_s
    );
    println!(
        "| time to first token p50 / p99 | {:.0} / {:.0} ms |",
        r.ttft_p50_ms, r.ttft_p99_ms
    );
    println!(
        "| latency p50 / p99 | {:.0} / {:.0} ms |",
        r.latency_p50_ms, r.latency_p99_ms
    );
    let rss = &r.server_rss_mb;
    println!(
        "| server RSS first tenth / last tenth / peak | {} / {} / {} ({} samples) |",
        mb(rss.early),
        mb(rss.late),
        mb(rss.peak),
        rss.samples
    );
}

fn main() -> ExitCode {
    zerolm_cli::main(run)
}
