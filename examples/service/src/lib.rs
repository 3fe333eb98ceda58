//! An HTTP service that serves prompts through swr-cache, in front of a
//! slow and flaky upstream, with the cache's metrics in Prometheus format;
//! and a load client that drives it and checks those metrics.
//!
//! ```text
//! cargo run --release -p swr-cache-service --bin service -- --port 3000
//! curl localhost:3000/prompts/prompt-1     # a prompt, from the cache
//! curl localhost:3000/metrics              # the cache's series
//! curl localhost:3000/state                # the refresher, as JSON
//! cargo run --release -p swr-cache-service --bin load -- http://127.0.0.1:3000
//! ```
//!
//! The parts to copy are in [`app`]: install the recorder before building
//! the cache, and call `report_metrics` before rendering a scrape.

pub mod app;
pub mod client;
pub mod load;
pub mod scrape;
pub mod upstream;
