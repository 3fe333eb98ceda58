//! What the refresher task holds: the keys it has taken from the store,
//! each queued, being fetched, or backing off after a failure.
//!
//! A key is taken in one of two ways, both under its shard's lock
//! (see the store's `due` order): as *due* (its value is the oldest of its
//! shard and older than the TTL) or as *nudged* (a reader found it stale and
//! asked). Taking moves the entry out of `due` and marks its value as asked
//! for, so no reader asks again while the task has it. The task then owns
//! the key's refresh until one of these ends it:
//!
//! - the refresh succeeds: its install wrote the entry, which put it back
//!   at the tail of `due` (or a newer write or removal won, with the same
//!   effect); anything the install did not write is given back. If the
//!   store handed the key over again while it was fetched (a newer value
//!   written or marked stale, then due or asked for), it is fetched again
//!   at once instead;
//! - the entry is written or removed by someone else: the next start of a
//!   fetch finds it no longer held ([`Flight::Gone`]) and lets the key go;
//! - the task ends: what it held is given back when the next task starts,
//!   which also claims the shards so that a task stopping late can take
//!   nothing more (see the store's `release_all`).
//!
//! A failed fetch keeps the key held (so readers stay quiet) and schedules
//! a retry after a backoff; while the circuit breaker is open (the
//! upstream, not the key, is failing), it waits in the queue instead, to go
//! as soon as the upstream is back. Keys a reader asked for are fetched
//! before keys taken as due, but for one of those after every
//! [`HOT_RUN`] of theirs, so reads cannot starve them; each key is queued
//! once, however often it is asked for. How many run at once is the concurrency
//! limit's ([`limit`](super::limit)); whether any may start, the breaker's
//! ([`breaker`](super::breaker)).
//!
//! [`Flight::Gone`]: crate::fetch::Flight::Gone

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use tokio::task::JoinSet;

use super::backoff::{Jitter, retry_delay};
use super::breaker::{Breaker, Permit, Turned};
use super::limit::{Limit, Outcome};
use super::state::Pass;
use crate::clock::{Nanos, duration_to_nanos};
use crate::fetch::{FetchError, Flight, Purpose, panic_as_error};
use crate::inner::Inner;
use crate::settings::Settings;
use crate::store::Nudge;

/// The most keys the task takes from one shard under one hold of its
/// lock: about a microsecond of writers to it waiting. (A refresh storm's
/// read p99.9 against the quiet one measured 0.84, 3.22 and 1.24 with 256,
/// 1.06 and 1.87 with 32: too noisy to tell apart here; the shorter hold
/// is the safer bound.)
const TAKE_BATCH: usize = 32;

/// The most fetches started in a row from readers' keys while keys taken
/// as due wait: then one of those goes, so that a steady flood of reads
/// cannot starve a key nobody reads (its value is stale all the same).
const HOT_RUN: u32 = 3;

/// Which line a queued key waits in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Line {
    /// Keys a reader asked for.
    Hot,
    /// Keys taken as due.
    Cold,
}

/// Where a held key is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for a fetch slot in this line. A key moved to the hot line
    /// (a reader asked for it) leaves a copy in the cold one, which is
    /// skipped when it comes up: each key is queued once.
    Queued(Line),
    /// Its fetch is under way.
    Fetching,
    /// Its fetch failed; it is queued again when the retry of this number
    /// comes due.
    BackingOff(u64),
}

struct Held {
    state: State,
    /// A reader asked for it: it goes to the front of the line.
    hot: bool,
    /// Fetches that failed in a row.
    failures: u32,
    /// Handed over again while fetching (a newer value was written or
    /// marked stale meanwhile): fetched again when this fetch ends, rather
    /// than let go.
    again: bool,
}

/// What the task knows of a fetch it started, when it ends.
pub(crate) struct Fetch {
    /// Started as the breaker's probe.
    probe: bool,
    /// How long it took, in nanoseconds.
    latency: u64,
    /// It joined a flight under way, so its latency is not the upstream's.
    joined: bool,
}

/// The task's keys and the fetches under way.
pub(crate) struct Holdings<K, V, S> {
    /// The task's number, which the store must know to let it take.
    task: u64,
    held: HashMap<K, Held, S>,
    /// Keys readers asked for, fetched first.
    hot: VecDeque<K>,
    /// Keys taken as due.
    cold: VecDeque<K>,
    /// Keys in the `Queued` state (the lines may also hold skipped copies).
    queued: usize,
    /// Keys in the `BackingOff` state.
    backing_off: usize,
    /// When a fetch last brought an answer.
    last_answer: Option<Nanos>,
    /// Fetches started from the hot line in a row while the cold one waited.
    hot_run: u32,
    /// Keys backing off, by retry time and retry number.
    retries: BTreeMap<(Nanos, u64), K>,
    next_retry: u64,
    pub(crate) fetching: JoinSet<(K, Result<V, FetchError>, Fetch)>,
    limit: Limit,
    breaker: Breaker,
    jitter: Jitter,
    /// Room for readers' requests, swapped with the cache's list.
    nudges: Vec<Nudge>,
    taken: Vec<K>,
    /// The shard the next look for due values starts at, so that none is
    /// always first.
    next_shard: usize,
    /// The most keys one call of the fetcher fetches (a batch fetcher's
    /// `max_batch`, else 1): the limit counts calls, so this many times
    /// as many keys are fetched at once.
    batch: usize,
}

impl<K, V, S> Holdings<K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    pub(crate) fn new(hasher: S, task: u64) -> Self {
        Self {
            task,
            held: HashMap::with_hasher(hasher),
            hot: VecDeque::new(),
            cold: VecDeque::new(),
            queued: 0,
            backing_off: 0,
            last_answer: None,
            hot_run: 0,
            retries: BTreeMap::new(),
            next_retry: 0,
            fetching: JoinSet::new(),
            limit: Limit::new(crate::settings::DEFAULT_MIN_CONCURRENT_REFRESHES),
            breaker: Breaker::new(),
            jitter: Jitter::new(),
            nudges: Vec::with_capacity(super::requests::NUDGE_CAPACITY),
            taken: Vec::new(),
            next_shard: 0,
            batch: 1,
        }
    }

    /// How many keys wait for a fetch slot.
    fn queued(&self) -> usize {
        self.queued
    }

    /// What operators see of this pass.
    pub(crate) fn pass(&self, settings: &Settings) -> Pass {
        Pass {
            in_flight: self.fetching.len(),
            limit: self.concurrency(settings),
            queued: self.queued,
            backing_off: self.backing_off,
            breaker: self.breaker.state(),
            last_answer: self.last_answer,
        }
    }

    /// Queues held `key` (not queued now) in the line its `hot` says.
    fn enqueue(&mut self, key: K) {
        let Some(held) = self.held.get_mut(&key) else {
            return;
        };
        let line = if held.hot { Line::Hot } else { Line::Cold };
        if matches!(held.state, State::BackingOff(_)) {
            self.backing_off -= 1;
        }
        held.state = State::Queued(line);
        self.queued += 1;
        self.line(line).push_back(key);
    }

    /// The next queued key to fetch, readers' first but for one key taken
    /// as due after every [`HOT_RUN`] of theirs; it leaves the queue.
    fn dequeue(&mut self) -> Option<K> {
        loop {
            let line = match (self.hot.is_empty(), self.cold.is_empty()) {
                (true, true) => return None,
                (false, false) if self.hot_run < HOT_RUN => Line::Hot,
                (false, true) => Line::Hot,
                _ => Line::Cold,
            };
            let key = self.line(line).pop_front()?;
            let Some(held) = self.held.get_mut(&key) else {
                continue;
            };
            // A copy left behind by a move to the hot line, or a key let go.
            if held.state != State::Queued(line) {
                continue;
            }
            held.state = State::Fetching;
            self.queued -= 1;
            self.hot_run = match line {
                Line::Hot if !self.cold.is_empty() => self.hot_run + 1,
                _ => 0,
            };
            return Some(key);
        }
    }

    /// The earliest time something is due to start: a retry, or the
    /// breaker's next probe while open, if there is a key to probe with and
    /// a slot to run it in (else a new key or a finished fetch wakes the
    /// task; waking for a probe that cannot start would spin).
    pub(crate) fn next_start_at(&self, settings: &Settings) -> Option<Nanos> {
        let retry = self.retries.first_key_value().map(|(&(at, _), _)| at);
        let can_probe = self.queued() > 0 && self.fetching.len() < self.keys_at_once(settings);
        let probe = self.breaker.probe_at().filter(|_| can_probe);
        match (retry, probe) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Follows the fetcher's batch size (it may be swapped).
    pub(crate) fn set_batch(&mut self, batch: usize) {
        self.batch = batch.max(1);
    }

    /// How many keys may be fetched at once now: the limit's calls, each
    /// of up to a batch of keys.
    pub(crate) fn keys_at_once(&self, settings: &Settings) -> usize {
        self.concurrency(settings).saturating_mul(self.batch)
    }

    /// How many calls of the fetcher may run at once now.
    pub(crate) fn concurrency(&self, settings: &Settings) -> usize {
        match settings.min_concurrent_refreshes {
            Some(floor) => self.limit.get(floor, settings.max_concurrent_refreshes),
            None => settings.max_concurrent_refreshes,
        }
    }

    /// Takes the entries readers asked for since the last call; returns
    /// whether the task should look for due values now (requests were
    /// dropped for want of room, or values marked stale).
    pub(crate) fn take_nudged(&mut self, inner: &Inner<K, V, S>) -> bool {
        let dropped = inner.refresher.nudges.take(&mut self.nudges);
        for i in 0..self.nudges.len() {
            if let Some(key) = inner.store.take_nudged(self.task, self.nudges[i]) {
                self.hold(key, true);
            }
        }
        dropped
    }

    /// Takes due values, shard by shard from a rotating start, until
    /// `want` keys are queued; returns whether it stopped for want of room
    /// rather than of due values (so more may be due).
    pub(crate) fn take_due(&mut self, inner: &Inner<K, V, S>, now: Nanos, want: usize) -> bool {
        let shards = inner.store.shard_count();
        loop {
            let need = want.saturating_sub(self.queued());
            if need == 0 {
                return true;
            }
            // A fair share of the need from each shard per round.
            let share = need.div_ceil(shards).min(TAKE_BATCH);
            let mut took = false;
            for k in 0..shards {
                let at = (self.next_shard + k) % shards;
                let mut taken = std::mem::take(&mut self.taken);
                inner.store.take_due(self.task, at, now, share, &mut taken);
                took |= !taken.is_empty();
                for key in taken.drain(..) {
                    self.hold(key, false);
                }
                self.taken = taken;
            }
            self.next_shard = (self.next_shard + 1) % shards;
            if !took {
                return false;
            }
        }
    }

    /// Records a key just taken, and queues it.
    fn hold(&mut self, key: K, hot: bool) {
        match self.held.entry(key) {
            Entry::Vacant(slot) => {
                let key = slot.key().clone();
                slot.insert(Held {
                    state: State::Fetching,
                    hot,
                    failures: 0,
                    again: false,
                });
                self.enqueue(key);
            }
            // Held already, for an older value (written since, then due or
            // asked for again): this value starts over.
            Entry::Occupied(mut held) => {
                let key = held.key().clone();
                let held = held.get_mut();
                held.hot |= hot;
                held.failures = 0;
                match held.state {
                    // The fetch under way began from the older value.
                    State::Fetching => held.again = true,
                    State::Queued(Line::Cold) if hot => {
                        held.state = State::Queued(Line::Hot);
                        self.hot.push_back(key);
                    }
                    State::Queued(_) => {}
                    State::BackingOff(_) => self.enqueue(key),
                }
            }
        }
    }

    fn line(&mut self, line: Line) -> &mut VecDeque<K> {
        match line {
            Line::Hot => &mut self.hot,
            Line::Cold => &mut self.cold,
        }
    }

    /// Queues again the keys whose retry has come.
    pub(crate) fn retry_due(&mut self, now: Nanos) {
        while let Some(entry) = self.retries.first_entry() {
            let (at, number) = *entry.key();
            if at > now {
                break;
            }
            let key = entry.remove();
            if self
                .held
                .get(&key)
                .is_some_and(|held| held.state == State::BackingOff(number))
            {
                self.enqueue(key);
            }
        }
    }

    /// Starts fetches, readers' keys first, while fewer than the limit run
    /// and the breaker allows.
    pub(crate) fn start_fetches(&mut self, inner: &Arc<Inner<K, V, S>>, now: Nanos) {
        let max_at_once = self.keys_at_once(&inner.settings.load());
        while self.fetching.len() < max_at_once {
            let probe = match self.breaker.permit(now) {
                Permit::Any => false,
                Permit::Probe => true,
                Permit::Wait => break,
            };
            let Some(key) = self.dequeue() else {
                break;
            };
            let timed = |key: K, probe| {
                move |result| {
                    let fetch = Fetch {
                        probe,
                        latency: 0,
                        joined: false,
                    };
                    (key, result, fetch)
                }
            };
            let started = tokio::time::Instant::now();
            let done = timed(key.clone(), probe);
            match inner.join_or_start_flight(key.clone(), Purpose::Refresh) {
                // A fetch task ends with its key whatever happens in it (a
                // panic in it too), so that the key is let go or backs off.
                Ok(Flight::Started(drive)) => {
                    self.fetching
                        .spawn(async move { latency(done(panic_as_error(drive).await), started) });
                }
                // Its latency is timed from the join, not the fetch's
                // start, so it says nothing of the upstream's: the limit
                // hears its outcome only. A flight that stalls is given
                // up on (it is fenced, and the key retried).
                Ok(Flight::Joined(flight)) => {
                    self.fetching.spawn(async move {
                        let result = panic_as_error(async {
                            flight.wait().await.unwrap_or(Err(FetchError::Cancelled))
                        });
                        let (key, result, mut fetch) = done(result.await);
                        fetch.joined = true;
                        (key, result, fetch)
                    });
                }
                // Written or removed since it was taken: not ours any more.
                // (A fetcher cannot be taken away once set.)
                Ok(Flight::Gone | Flight::Found(_)) | Err(_) => {
                    self.held.remove(&key);
                    continue;
                }
            }
            if probe {
                self.breaker.probing();
            }
        }
    }

    /// Feeds a finished fetch to the limit and the breaker.
    fn judge(
        &mut self,
        settings: &Settings,
        now: Nanos,
        key: &K,
        result: &Result<V, FetchError>,
        fetch: &Fetch,
    ) {
        let outcome = match result {
            // The upstream answered, if not for this key.
            Ok(_) | Err(FetchError::Gone | FetchError::NothingToKeep | FetchError::LeftOut) => {
                self.last_answer = Some(now);
                Outcome::Answered
            }
            // Stopped by this side, not the upstream's doing: says nothing
            // of the upstream, but a probe ended so must be tried again.
            Err(FetchError::Cancelled | FetchError::NoFetcher | FetchError::NoRuntime) => {
                if fetch.probe {
                    self.breaker.abandon_probe(now);
                }
                return;
            }
            Err(_) => Outcome::Failed,
        };
        if let Some(floor) = settings.min_concurrent_refreshes {
            // The limit counts calls, each of up to a batch of keys.
            self.limit.record(
                outcome,
                (!fetch.joined).then_some(fetch.latency),
                (floor, settings.max_concurrent_refreshes),
                self.batch,
            );
        }
        let new_key = self.held.get(key).is_none_or(|h| h.failures == 0);
        match self.breaker.record(outcome, fetch.probe, new_key, now) {
            Some(Turned::Closed) => {
                tracing::info!("refresh breaker closed: the upstream answers again");
                self.limit.restart();
            }
            Some(Turned::Opened) => {
                tracing::warn!(
                    "refresh breaker open: fetches failing across keys; only probes go until one answers"
                );
                self.queue_backing_off();
            }
            None => {}
        }
    }

    /// Queues every key backing off: the breaker opened, so their own
    /// backoffs no longer say when they go (it does).
    fn queue_backing_off(&mut self) {
        let retries = std::mem::take(&mut self.retries);
        for (_, key) in retries {
            if self
                .held
                .get(&key)
                .is_some_and(|held| matches!(held.state, State::BackingOff(_)))
            {
                self.enqueue(key);
            }
        }
    }

    /// A fetch ended: the key is let go, or backs off.
    pub(crate) fn finished(
        &mut self,
        inner: &Inner<K, V, S>,
        now: Nanos,
        (key, result, fetch): (K, Result<V, FetchError>, Fetch),
    ) {
        let settings = inner.settings.load();
        self.judge(&settings, now, &key, &result, &fetch);
        let again = self
            .held
            .get_mut(&key)
            .is_some_and(|held| std::mem::take(&mut held.again));
        if result.is_ok() && again {
            // The store handed a newer value over meanwhile: the refresher
            // holds it still, and fetches it now.
            self.enqueue(key);
            return;
        }
        if result.is_ok() {
            self.held.remove(&key);
            // Written by the install, or by a newer write; if neither (the
            // result went to a load that found the key present), given back.
            inner.store.release(&key);
            return;
        }
        if inner.store.read_held(&key, |_| ()).is_none() {
            self.held.remove(&key);
            return;
        }
        let Some(held) = self.held.get_mut(&key) else {
            return;
        };
        if self.breaker.is_open() {
            // The upstream is down, not this key: it waits for the breaker.
            self.enqueue(key);
            return;
        }
        let base = duration_to_nanos(settings.refresh_interval);
        let cap = duration_to_nanos(settings.max_retry_backoff);
        held.failures = held.failures.saturating_add(1);
        let delay = retry_delay(base, cap, held.failures, self.jitter.next_unit());
        let number = self.next_retry;
        self.next_retry += 1;
        held.state = State::BackingOff(number);
        self.backing_off += 1;
        self.retries
            .insert((now.saturating_add(delay), number), key);
    }
}

/// Stamps a finished fetch with the time since `started`.
fn latency<K, V>(mut done: (K, V, Fetch), started: tokio::time::Instant) -> (K, V, Fetch) {
    done.2.latency = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::hash_map::RandomState;

    fn holdings() -> Holdings<String, String, RandomState> {
        Holdings::new(RandomState::new(), 1)
    }

    fn drain(h: &mut Holdings<String, String, RandomState>) -> Vec<String> {
        std::iter::from_fn(|| h.dequeue()).collect()
    }

    /// (Review #18.4.) A key asked for again while queued (written, then
    /// read stale, during an outage) was pushed again each time: the hot
    /// line grew without bound, and the copies counted as queued, so keys
    /// due but unread were not taken.
    #[test]
    fn a_key_asked_for_again_while_queued_is_queued_once() {
        let mut h = holdings();
        h.hold("k".into(), false);
        for _ in 0..100 {
            h.hold("k".into(), true);
        }
        assert_eq!(h.queued(), 1);
        assert!(h.hot.len() + h.cold.len() <= 2, "one copy per line at most");
        assert_eq!(drain(&mut h), ["k"], "fetched once");
        assert_eq!(h.queued(), 0);
    }

    /// (Review #18.9.) Readers' keys go first, but a steady flood of them
    /// no longer starves a key taken as due: one goes after every
    /// `HOT_RUN` of theirs.
    #[test]
    fn a_key_taken_as_due_goes_between_runs_of_readers_keys() {
        let mut h = holdings();
        h.hold("due".into(), false);
        for i in 0..10 {
            h.hold(format!("read{i}"), true);
        }
        let order = drain(&mut h);
        let at = order.iter().position(|k| k == "due");
        assert_eq!(at, Some(HOT_RUN as usize), "{order:?}");
        assert_eq!(order.len(), 11);
    }

    /// (Review #18.3.) A key handed over again while its fetch runs (marked
    /// stale, or written and read stale) is fetched again when the fetch
    /// ends, not let go until the next look.
    #[test]
    fn a_key_handed_over_while_fetching_is_queued_again_when_it_ends() {
        let mut h = holdings();
        h.hold("k".into(), false);
        assert_eq!(drain(&mut h), ["k"]);
        h.hold("k".into(), false);
        assert_eq!(h.queued(), 0, "fetching: not queued twice at once");
        assert!(h.held["k"].again);
    }
}
