//! Load on a running service: connections that GET prompts, most of them a
//! few popular ones, for a set time; and the check that a service under
//! that load reports its cache to Prometheus.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tokio::time::Instant;

use crate::client::{Connection, HttpError};
use crate::scrape::{self, Failures};

/// The shape of the load.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    /// Connections, each sending one request after another.
    pub connections: usize,
    /// Prompts asked for: `prompt-0` to `prompt-{prompts - 1}`, the lower
    /// ones far more often.
    pub prompts: usize,
    pub duration: Duration,
}

/// Responses by status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub ok: u64,
    pub not_found: u64,
    pub unavailable: u64,
    pub other: u64,
}

impl Tally {
    pub fn total(&self) -> u64 {
        self.ok + self.not_found + self.unavailable + self.other
    }

    fn add(&mut self, other: Tally) {
        self.ok += other.ok;
        self.not_found += other.not_found;
        self.unavailable += other.unavailable;
        self.other += other.other;
    }
}

/// Sends the load to the service at `authority` (`host:port`) and counts
/// the answers.
///
/// # Errors
/// The first connection that failed (to connect, or mid-response).
pub async fn drive(authority: &str, load: Load) -> Result<Tally, HttpError> {
    let deadline = Instant::now() + load.duration;
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..load.connections {
        let authority = authority.to_owned();
        workers.spawn(async move {
            let mut connection = Connection::open(&authority).await?;
            let mut rng = SmallRng::seed_from_u64(worker as u64);
            let mut tally = Tally::default();
            while Instant::now() < deadline {
                // u³ skews toward 0: half the requests ask for the first
                // eighth of the prompts.
                let u: f64 = rng.random();
                let prompt = (load.prompts as f64 * u * u * u) as usize;
                let response = connection.get(&format!("/prompts/prompt-{prompt}")).await?;
                match response.status {
                    200 => tally.ok += 1,
                    404 => tally.not_found += 1,
                    503 => tally.unavailable += 1,
                    _ => tally.other += 1,
                }
            }
            Ok::<_, HttpError>(tally)
        });
    }
    let mut tally = Tally::default();
    while let Some(done) = workers.join_next().await {
        // A worker only ends by returning; a JoinError is a panic, passed on.
        tally.add(done.map_err(|error| HttpError::Io(std::io::Error::other(error)))??);
    }
    Ok(tally)
}

/// Why a service failed its check.
#[derive(Debug)]
pub enum CheckError {
    Http(HttpError),
    /// `/metrics` answered with this status.
    Scrape(u16),
    /// No prompt request got a 200.
    NothingServed(Tally),
    /// Series missing or not moving.
    Metrics(Failures),
}

impl std::fmt::Display for CheckError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Http(error) => write!(f, "{error}"),
            Self::Scrape(status) => write!(f, "/metrics answered {status}"),
            Self::NothingServed(tally) => write!(f, "no prompt was served: {tally:?}"),
            Self::Metrics(failures) => write!(f, "the cache's series are wanting:\n{failures}"),
        }
    }
}

impl std::error::Error for CheckError {}

impl From<HttpError> for CheckError {
    fn from(error: HttpError) -> Self {
        Self::Http(error)
    }
}

/// Drives `load` at the service at `authority`, scrapes `/metrics` half-way
/// and at the end, and checks that the cache named `cache` is there and
/// moving ([`scrape::check`]). Returns the tally of the load.
///
/// # Errors
/// What was wanting; see [`CheckError`].
pub async fn check_service(authority: &str, load: Load, cache: &str) -> Result<Tally, CheckError> {
    let mut metrics = Connection::open(authority).await?;
    let driving = tokio::spawn({
        let authority = authority.to_owned();
        async move { drive(&authority, load).await }
    });
    tokio::time::sleep(load.duration / 2).await;
    let first = scrape_text(&mut metrics).await?;
    let tally = driving
        .await
        .map_err(|error| HttpError::Io(std::io::Error::other(error)))??;
    let second = scrape_text(&mut metrics).await?;
    if tally.ok == 0 {
        return Err(CheckError::NothingServed(tally));
    }
    scrape::check(&first, &second, cache).map_err(CheckError::Metrics)?;
    Ok(tally)
}

async fn scrape_text(connection: &mut Connection) -> Result<String, CheckError> {
    let response = connection.get("/metrics").await?;
    if response.status != 200 {
        return Err(CheckError::Scrape(response.status));
    }
    Ok(String::from_utf8_lossy(&response.body).into_owned())
}
