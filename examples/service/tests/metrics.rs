//! The service under load reports its cache to Prometheus: what `load
//! --check` (and so CI) asks, here in one process. Alone in its file: it
//! installs the process's recorder.

use std::time::Duration;

use swr_cache_service::app::{CACHE_NAME, build_cache, install_metrics, router};
use swr_cache_service::load::{Load, check_service};
use swr_cache_service::upstream::{Settings, Upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_the_cache_series_are_scraped_and_moving() {
    // Real time (sockets, a refresher), so under a watchdog.
    tokio::time::timeout(Duration::from_secs(60), async {
        let metrics = install_metrics().expect("the only recorder");
        let upstream = Upstream::new(Settings {
            prompts: 200,
            ..Settings::default()
        });
        let cache = build_cache(upstream).expect("valid settings");
        cache.start().expect("in a runtime");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let address = listener.local_addr().expect("bound").to_string();
        tokio::spawn(async move { axum::serve(listener, router(cache, metrics)).await });

        let load = Load {
            connections: 4,
            prompts: 200,
            duration: Duration::from_secs(2),
        };
        let tally = check_service(&address, load, CACHE_NAME)
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        assert!(tally.ok > 0, "{tally:?}");
    })
    .await
    .expect("within the watchdog");
}
