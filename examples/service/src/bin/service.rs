//! The prompt service: `/prompts/{name}`, `/metrics`, `/state` on
//! 127.0.0.1. With `--port 0` (the default) it binds a free port; either
//! way its first line on stdout is `listening on http://ADDRESS`.

use std::io::Write;
use std::time::Duration;

use clap::{Arg, Command, value_parser};
use swr_cache_service::app::{build_cache, install_metrics, router};
use swr_cache_service::upstream::{Settings, Upstream};

#[path = "../../../support/cli.rs"]
mod cli;

fn command() -> Command {
    Command::new("service")
        .about("Serves prompts through swr-cache in front of a simulated, slow and flaky hub.")
        .arg(
            Arg::new("port")
                .long("port")
                .value_name("PORT")
                .default_value("0")
                .value_parser(value_parser!(u16))
                .help("The port on 127.0.0.1 (0: a free one)"),
        )
        .arg(
            Arg::new("prompts")
                .long("prompts")
                .value_name("N")
                .default_value("2000")
                .value_parser(value_parser!(u64).range(1..=10_000_000))
                .help("Prompts the hub holds: prompt-0, prompt-1, ..."),
        )
        .arg(
            Arg::new("error-rate")
                .long("error-rate")
                .value_name("FRACTION")
                .default_value("0.05")
                .value_parser(value_parser!(f64))
                .help("The share of hub calls that fail, 0 to 1"),
        )
        .arg(cli::seconds(
            "duration",
            "86400",
            "How long the service runs before it exits",
        ))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let matches = command().get_matches();
    let error_rate = *matches.get_one::<f64>("error-rate").expect("has a default");
    if !(0.0..=1.0).contains(&error_rate) {
        return Err("--error-rate must be between 0 and 1".into());
    }
    let settings = Settings {
        prompts: *matches.get_one::<u64>("prompts").expect("has a default") as usize,
        error_rate,
        ..Settings::default()
    };

    // First the recorder: the cache takes its histogram handles when built.
    let metrics = install_metrics()?;
    let upstream = Upstream::new(settings);
    upstream.spawn_publisher();
    let cache = build_cache(upstream)?;
    cache.start()?;
    // Drains the histograms now and then, so that a service nobody scrapes
    // holds no growing backlog of samples.
    tokio::spawn({
        let metrics = metrics.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                metrics.run_upkeep();
            }
        }
    });

    let port = *matches.get_one::<u16>("port").expect("has a default");
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on http://{}", listener.local_addr()?);
    std::io::stdout().flush()?;

    let duration = *matches
        .get_one::<Duration>("duration")
        .expect("has a default");
    axum::serve(listener, router(cache, metrics))
        .with_graceful_shutdown(tokio::time::sleep(duration))
        .await?;
    Ok(())
}
