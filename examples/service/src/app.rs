//! The service: a prompt cache in front of the upstream, and the routes that
//! serve it (`/prompts/{name}`, `/metrics`, `/state`).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use swr_cache::{BreakerState, Cache, ConfigError, FetchError};

use crate::upstream::{Prompt, Upstream};

/// The `cache` label of the cache's series.
pub const CACHE_NAME: &str = "prompts";

/// The longest prompt name the service looks up: longer ones are refused
/// before they reach the cache or the upstream.
const MAX_NAME: usize = 128;

/// The cache the service serves from.
pub type PromptCache = Cache<String, Arc<Prompt>>;

/// Installs the Prometheus recorder as the process's `metrics` recorder.
/// Call it before building the cache: the cache takes its histogram handles
/// when it is built. The two histograms are rendered with buckets (the
/// exporter's default is a summary), so that PromQL's `histogram_quantile`
/// aggregates them across replicas.
pub fn install_metrics() -> Result<PrometheusHandle, BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("swr_cache_fetch_seconds".into()),
            &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5],
        )?
        .set_buckets_for_metric(
            Matcher::Full("swr_cache_stale_served_seconds".into()),
            &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
        )?
        .install_recorder()
}

/// The prompt cache: fresh for 2 s, then served stale while the refresher
/// fetches the prompt again; at most 1000 prompts.
pub fn build_cache(upstream: Upstream) -> Result<PromptCache, ConfigError> {
    Cache::builder()
        .name(CACHE_NAME)
        .max_size(1_000)
        .ttl(Duration::from_secs(2))
        .refresh_interval(Duration::from_millis(500))
        .refresh_timeout(Duration::from_secs(1))
        .fetcher_impl(upstream)
        .build()
}

/// What the handlers share.
#[derive(Clone)]
struct Shared {
    cache: PromptCache,
    metrics: PrometheusHandle,
}

/// The service's routes over `cache`, with `metrics` (from
/// [`install_metrics`]) rendered at `/metrics`.
pub fn router(cache: PromptCache, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/prompts/{name}", get(prompt))
        .route("/metrics", get(scrape))
        .route("/state", get(state))
        .with_state(Shared { cache, metrics })
}

/// A prompt as JSON, from the cache (fresh or stale), or read through the
/// upstream on a miss.
async fn prompt(State(shared): State<Shared>, Path(name): Path<String>) -> Response {
    // Names are echoed in the JSON body unescaped: only these characters.
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.len() > MAX_NAME || !name.chars().all(valid) {
        return (
            StatusCode::BAD_REQUEST,
            "a prompt name is 1 to 128 of [A-Za-z0-9._-]\n",
        )
            .into_response();
    }
    match shared.cache.get_or_fetch(name.as_str()).await {
        Ok(prompt) => (
            [(header::CONTENT_TYPE, "application/json")],
            format!(
                "{{\"name\":\"{}\",\"version\":{},\"template\":\"{}\"}}\n",
                prompt.name, prompt.version, prompt.template
            ),
        )
            .into_response(),
        Err(FetchError::Gone) => (StatusCode::NOT_FOUND, "no such prompt\n").into_response(),
        // Nothing cached and the upstream failed: the caller may retry.
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the prompt hub is unavailable\n",
        )
            .into_response(),
    }
}

/// The Prometheus scrape: the cache's counters and gauges as of now, then
/// everything the recorder holds.
async fn scrape(State(shared): State<Shared>) -> impl IntoResponse {
    shared.cache.report_metrics();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        shared.metrics.render(),
    )
}

/// The refresher's state as JSON, for a look without Prometheus.
async fn state(State(shared): State<Shared>) -> impl IntoResponse {
    let state = shared.cache.refresher_state();
    let breaker = match state.breaker {
        BreakerState::Closed => "closed",
        BreakerState::Open => "open",
        BreakerState::Probing => "probing",
        _ => "unknown",
    };
    let last_answer = state.last_answer.map_or("null".to_owned(), |at| {
        format!("{:.3}", at.elapsed().as_secs_f64())
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!(
            "{{\"running\":{},\"in_flight\":{},\"limit\":{},\"queued\":{},\"backing_off\":{},\"breaker\":\"{breaker}\",\"entries\":{},\"last_answer_seconds_ago\":{last_answer}}}\n",
            state.running,
            state.in_flight,
            state.limit,
            state.queued,
            state.backing_off,
            shared.cache.len(),
        ),
    )
}
