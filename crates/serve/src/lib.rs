//! `serve`: a zerolm model directory behind an OpenAI-compatible HTTP API (tokio + axum).
//!
//! - [`openai`]: the requests of the chat and completions APIs, read and checked (400s name the field);
//! - [`engine`]: the decoding thread with its bounded queue (429 when full), decoding the running
//!   sequences together in one packed forward per token (continuous batching), and prompt scoring;
//! - [`routes`]: the chat page, the endpoints, Server-Sent Events streaming and the request log;
//! - [`error`]: errors in OpenAI's `{"error": {...}}` shape;
//! - [`load`]: the load test a client runs against a server (`serve-load`).

pub mod engine;
pub mod error;
pub mod load;
pub mod openai;
pub mod routes;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use zerolm_model::infer::Generator;
use zerolm_model::Precision;

pub use engine::{Engine, Limits};
pub use routes::{router, AppState};

/// Requests larger than this are refused (413).
pub const MAX_BODY_BYTES: usize = 4 << 20;

/// Loads `dir` and starts its decoding thread: the state the routes serve.
pub fn load(
    dir: &Path,
    precision: Precision,
    limits: Limits,
) -> Result<Arc<AppState>, zerolm_model::ModelError> {
    let Generator { model, tokenizer } = Generator::load(dir, precision)?;
    let (model, tokenizer) = (Arc::new(model), Arc::new(tokenizer));
    let engine = Engine::start(model.clone(), tokenizer.clone(), limits);
    let model_id = model_id(dir);
    Ok(Arc::new(AppState {
        model,
        tokenizer,
        engine,
        model_id,
    }))
}

/// The name a model directory is served under (see [`zerolm_model::io::model_name`]).
pub fn model_id(dir: &Path) -> String {
    zerolm_model::io::model_name(dir)
}

/// Serves `state` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state)
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::GATEWAY_TIMEOUT,
            Duration::from_secs(600),
        ));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
