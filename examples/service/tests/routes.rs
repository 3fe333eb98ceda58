//! The service's routes, served on a free loopback port and read with the
//! load client's connection.

use std::future::Future;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use swr_cache_service::app::{build_cache, router};
use swr_cache_service::client::{Connection, Response};
use swr_cache_service::upstream::{Settings, Upstream};

/// Serves a service over a hub that fails `error_rate` of its calls;
/// returns its address and the hub. Its recorder is not installed: these
/// tests read the routes, not the series.
async fn serve(error_rate: f64) -> (String, Upstream) {
    let upstream = Upstream::new(Settings {
        prompts: 10,
        error_rate,
        ..Settings::default()
    });
    let cache = build_cache(upstream.clone()).expect("valid settings");
    cache.start().expect("in a runtime");
    let metrics = PrometheusBuilder::new().build_recorder().handle();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let address = listener.local_addr().expect("bound").to_string();
    tokio::spawn(async move { axum::serve(listener, router(cache, metrics)).await });
    (address, upstream)
}

async fn get(address: &str, path: &str) -> Response {
    let mut connection = Connection::open(address).await.expect("connects");
    connection.get(path).await.expect("a response")
}

fn body(response: &Response) -> &str {
    std::str::from_utf8(&response.body).expect("UTF-8")
}

/// Real time (the server's sockets), so under a watchdog.
async fn watchdog(test: impl Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(30), test)
        .await
        .expect("within the watchdog");
}

#[tokio::test]
async fn a_prompt_is_served_as_json_and_then_from_the_cache() {
    watchdog(async {
        let (address, upstream) = serve(0.0).await;
        let response = get(&address, "/prompts/prompt-3").await;
        assert_eq!(response.status, 200);
        assert_eq!(
            body(&response),
            "{\"name\":\"prompt-3\",\"version\":1,\"template\":\"You are the assistant of prompt-3, revision 1. {question}\"}\n"
        );
        let again = get(&address, "/prompts/prompt-3").await;
        assert_eq!(body(&again), body(&response));
        assert_eq!(upstream.calls(), 1, "the second read was a hit");
    })
    .await;
}

#[tokio::test]
async fn a_prompt_the_hub_does_not_hold_is_not_found() {
    watchdog(async {
        let (address, _) = serve(0.0).await;
        assert_eq!(get(&address, "/prompts/prompt-10").await.status, 404);
    })
    .await;
}

#[tokio::test]
async fn a_name_outside_the_alphabet_is_refused_before_the_hub() {
    watchdog(async {
        let (address, upstream) = serve(0.0).await;
        let long = format!("/prompts/{}", "a".repeat(129));
        for path in ["/prompts/a%20b", "/prompts/%22quoted%22", long.as_str()] {
            assert_eq!(get(&address, path).await.status, 400, "{path}");
        }
        assert_eq!(upstream.calls(), 0);
    })
    .await;
}

#[tokio::test]
async fn a_miss_while_the_hub_fails_is_unavailable() {
    watchdog(async {
        let (address, _) = serve(1.0).await;
        assert_eq!(get(&address, "/prompts/prompt-1").await.status, 503);
    })
    .await;
}

#[tokio::test]
async fn the_state_shows_the_refresher_running() {
    watchdog(async {
        let (address, _) = serve(0.0).await;
        let response = get(&address, "/state").await;
        assert_eq!(response.status, 200);
        assert!(
            body(&response).starts_with("{\"running\":true,"),
            "{}",
            body(&response)
        );
    })
    .await;
}
