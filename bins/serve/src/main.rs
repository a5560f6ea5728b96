//! `serve`: a trained model directory behind an OpenAI-compatible API (`/v1/chat/completions`,
//! `/v1/completions`, `/v1/models`, `/health`). All logic lives in `zerolm-serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use zerolm_cli::threads::ComputeArgs;
use zerolm_serve::Limits;

#[derive(Parser)]
#[command(
    about = "Serve a zerolm model directory over an OpenAI-compatible HTTP API",
    version
)]
struct Cli {
    /// Model directory (config.json, model.safetensors, tokenizer files), e.g. runs/dpo/model.
    #[arg(long)]
    model: PathBuf,
    /// Address to listen on; loopback unless told otherwise.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Requests that may wait for a decoding slot; more get 429.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Sequences decoded at once (the others wait in the queue).
    #[arg(long, default_value_t = 16)]
    max_active: usize,
    #[command(flatten)]
    compute: ComputeArgs,
}

fn run(cli: Cli) -> Result<()> {
    cli.compute.apply()?;
    let limits = Limits {
        queue: cli.queue,
        max_active: cli.max_active,
    };
    let state = zerolm_serve::load(&cli.model, cli.compute.precision, limits)?;
    let addr: SocketAddr = format!("{}:{}", cli.host, cli.port).parse().map_err(|e| {
        zerolm_cli::UsageError(format!("--host {} --port {}: {e}", cli.host, cli.port))
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| zerolm_cli::UsageError(format!("cannot listen on {addr}: {e}")))?;
        eprintln!(
            "serving {} ({}) on http://{} — POST /v1/chat/completions, /v1/completions; GET /v1/models, /health",
            state.model_id,
            cli.model.display(),
            listener.local_addr().context("listening address")?
        );
        let stop = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        zerolm_serve::serve(listener, state, stop).await?;
        Ok(())
    })
}

fn main() -> ExitCode {
    zerolm_cli::main(run)
}
