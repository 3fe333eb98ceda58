//! Load on the prompt service: `load http://127.0.0.1:PORT` sends requests
//! for a while and prints what came back; with `--check` it also scrapes
//! `/metrics` half-way and at the end and exits non-zero unless the
//! cache's series are there and moving (what CI runs).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Arg, ArgAction, Command, value_parser};
use swr_cache_service::app::CACHE_NAME;
use swr_cache_service::client::authority;
use swr_cache_service::load::{Load, Tally, check_service, drive};

#[path = "../../../support/cli.rs"]
mod cli;

fn command() -> Command {
    Command::new("load")
        .about("Sends prompt requests to the service; --check also checks its /metrics.")
        .arg(
            Arg::new("url")
                .value_name("URL")
                .required(true)
                .help("The service, http://host:port"),
        )
        .arg(cli::seconds("duration", "5", "How long the load runs"))
        .arg(
            Arg::new("connections")
                .long("connections")
                .value_name("N")
                .default_value("8")
                .value_parser(value_parser!(u64).range(1..=256))
                .help("Connections sending requests at once"),
        )
        .arg(
            Arg::new("prompts")
                .long("prompts")
                .value_name("N")
                .default_value("2000")
                .value_parser(value_parser!(u64).range(1..=10_000_000))
                .help("Prompts asked for, the lower ones more often"),
        )
        .arg(
            Arg::new("check")
                .long("check")
                .action(ArgAction::SetTrue)
                .help("Scrape /metrics half-way and at the end; fail unless the cache's series are there and moving"),
        )
}

fn print(tally: &Tally, duration: Duration) {
    println!(
        "{} requests in {:.1} s ({:.0}/s): {} ok, {} not found, {} unavailable, {} other",
        tally.total(),
        duration.as_secs_f64(),
        tally.total() as f64 / duration.as_secs_f64(),
        tally.ok,
        tally.not_found,
        tally.unavailable,
        tally.other
    );
}

#[tokio::main]
async fn main() -> ExitCode {
    let matches = command().get_matches();
    let url = matches.get_one::<String>("url").expect("required");
    let count = |name| *matches.get_one::<u64>(name).expect("has a default") as usize;
    let load = Load {
        connections: count("connections"),
        prompts: count("prompts"),
        duration: *matches
            .get_one::<Duration>("duration")
            .expect("has a default"),
    };
    let authority = match authority(url) {
        Ok(authority) => authority,
        Err(error) => {
            eprintln!("load: {error}");
            return ExitCode::FAILURE;
        }
    };
    if matches.get_flag("check") {
        match check_service(authority, load, CACHE_NAME).await {
            Ok(tally) => {
                print(&tally, load.duration);
                println!("check passed: the cache's series are there and moving");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("load --check failed: {error}");
                ExitCode::FAILURE
            }
        }
    } else {
        match drive(authority, load).await {
            Ok(tally) => {
                print(&tally, load.duration);
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("load: {error}");
                ExitCode::FAILURE
            }
        }
    }
}
