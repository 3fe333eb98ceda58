//! What the examples' command lines share: a flag that takes a duration
//! in seconds.

use std::time::Duration;

use clap::Arg;

/// The longest duration a flag accepts: a day.
const MAX_SECONDS: f64 = 86_400.0;

/// A `--name SECONDS` flag with a default, parsed into a [`Duration`].
pub fn seconds(name: &'static str, default: &'static str, help: &'static str) -> Arg {
    Arg::new(name)
        .long(name)
        .value_name("SECONDS")
        .default_value(default)
        .value_parser(parse_seconds)
        .help(help)
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !(seconds > 0.0 && seconds <= MAX_SECONDS) {
        return Err(format!(
            "must be more than 0 and at most {MAX_SECONDS} seconds"
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}
