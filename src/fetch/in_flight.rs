//! [`InFlight`]: the maps of fetches under way, async and blocking, and
//! their fences.
//!
//! A fence is a flag a fetch's install reads under the key's shard lock
//! (see `flight.rs`): once set, the fetch stores nothing. A removal fences
//! the key's fetches of both kinds and takes them out of the maps, so that
//! no caller after it joins one. A slot is always flagged before it leaves
//! its map, under the map's lock: a slot out of the map and not yet
//! flagged would be one that a second removal finds nowhere, and returns
//! before the flag is set.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::ThreadId;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::watch;
use tokio::time::Instant;

use super::fetcher::FetchError;
use super::latch::Latch;

/// The outcome of one fetch, once it has one.
pub(crate) type Outcome<V> = Option<Result<V, FetchError>>;

/// Where a fetch's result will appear.
pub(crate) type FlightReceiver<V> = watch::Receiver<Outcome<V>>;

/// Where a fetch's driver publishes its result.
pub(crate) type FlightSender<V> = watch::Sender<Outcome<V>>;

/// A fetch under way, as the map of flights holds it.
struct FlightSlot<V> {
    result: FlightReceiver<V>,
    /// Set by a removal of the key: the fetch's value is not stored.
    fence: Arc<AtomicBool>,
    /// When the flight should have ended; whoever joins it waits no longer.
    ends_by: Instant,
}

/// A blocking read-through under way (`get_or_insert_with`).
struct BlockingSlot {
    /// Opens when the loading thread is done, whatever the outcome.
    done: Arc<Latch>,
    /// The thread loading the key: if it asks for the key again (from its
    /// own loader), it loads again rather than wait for itself.
    loader: ThreadId,
    /// Set by a removal of the key: the loaded value is not stored.
    fence: Arc<AtomicBool>,
}

/// What [`InFlight::join_or_claim`] found for a key.
pub(crate) enum FlightClaim<V> {
    /// A fetch under way: its result, and when it should have ended.
    Joined(FlightReceiver<V>, Instant),
    /// None was: the caller's flight is in the map now. Its driver
    /// publishes on `publish`; `receiver` names the flight when it leaves.
    Claimed {
        publish: FlightSender<V>,
        receiver: FlightReceiver<V>,
        fence: Arc<AtomicBool>,
    },
}

/// What a thread that missed does, as [`InFlight::join_or_claim_blocking`]
/// decides.
pub(crate) enum LoadRole {
    /// Another thread loads the key: wait for it, then read again.
    Wait(Arc<Latch>),
    /// Load it, registered as the key's loader; open the latch when done.
    Load(Arc<Latch>, Arc<AtomicBool>),
    /// This thread is the key's loader already (its loader asked again):
    /// load again, under the registered load's fence, since a removal
    /// while either runs must keep both out.
    Reenter(Arc<AtomicBool>),
}

/// The fetches under way, at most one async and one blocking per key, and
/// their fences: a removal of the key fences both and takes them out.
pub(crate) struct InFlight<K, V, S> {
    flights: DashMap<K, FlightSlot<V>, S>,
    blocking: DashMap<K, BlockingSlot, S>,
}

impl<K, V, S> InFlight<K, V, S>
where
    K: Hash + Eq,
    S: BuildHasher + Clone,
{
    pub(crate) fn new(hasher: S) -> Self {
        Self {
            flights: DashMap::with_hasher(hasher.clone()),
            blocking: DashMap::with_hasher(hasher),
        }
    }

    /// Joins the flight of `key` under way, or puts a new one in its place
    /// (none, or one `clear` fenced, which is as good as gone), to end by
    /// `ends_by()`.
    pub(crate) fn join_or_claim(
        &self,
        key: K,
        ends_by: impl FnOnce() -> Instant,
    ) -> FlightClaim<V> {
        match self.flights.entry(key) {
            Entry::Occupied(flight) if !flight.get().fence.load(Ordering::SeqCst) => {
                FlightClaim::Joined(flight.get().result.clone(), flight.get().ends_by)
            }
            entry => {
                let (publish, receiver) = watch::channel(None);
                let fence = Arc::new(AtomicBool::new(false));
                let slot = FlightSlot {
                    result: receiver.clone(),
                    fence: Arc::clone(&fence),
                    ends_by: ends_by(),
                };
                match entry {
                    Entry::Occupied(mut fenced) => drop(fenced.insert(slot)),
                    Entry::Vacant(vacant) => drop(vacant.insert(slot)),
                }
                FlightClaim::Claimed {
                    publish,
                    receiver,
                    fence,
                }
            }
        }
    }

    /// Takes the flight `receiver` names out of the map, if it is still
    /// there (a fence may have taken it, and another flight of the key may
    /// be there).
    pub(crate) fn leave(&self, key: &K, receiver: &FlightReceiver<V>) {
        self.flights
            .remove_if(key, |_, slot| slot.result.same_channel(receiver));
    }

    /// [`InFlight::leave`], only if no one joined the flight (its only
    /// receivers are the map's and the driver's); whether it left.
    pub(crate) fn leave_unjoined(
        &self,
        key: &K,
        receiver: &FlightReceiver<V>,
        publish: &FlightSender<V>,
    ) -> bool {
        self.flights
            .remove_if(key, |_, slot| {
                slot.result.same_channel(receiver) && publish.receiver_count() == 2
            })
            .is_some()
    }

    /// Fences the flight `result` names and takes it out of the map, if it
    /// is still the key's: its driver stalled, and whoever asks next starts
    /// a new one.
    pub(crate) fn give_up(&self, key: &K, result: &FlightReceiver<V>) {
        self.flights.remove_if(key, |_, slot| {
            let stalled = slot.result.same_channel(result);
            if stalled {
                slot.fence.store(true, Ordering::SeqCst);
            }
            stalled
        });
    }

    /// Registers this thread (`me`) as the loader of `key`, or finds the
    /// thread loading it: what this thread does next.
    pub(crate) fn join_or_claim_blocking(&self, key: K, me: ThreadId) -> LoadRole {
        match self.blocking.entry(key) {
            // A load `clear` fenced is as good as gone: it is replaced.
            Entry::Occupied(slot) if slot.get().fence.load(Ordering::SeqCst) => {
                let (new, role) = new_load(me);
                drop(slot.replace_entry(new));
                role
            }
            Entry::Occupied(slot) if slot.get().loader == me => {
                LoadRole::Reenter(Arc::clone(&slot.get().fence))
            }
            Entry::Occupied(slot) => LoadRole::Wait(Arc::clone(&slot.get().done)),
            Entry::Vacant(slot) => {
                let (new, role) = new_load(me);
                drop(slot.insert(new));
                role
            }
        }
    }

    /// Takes the blocking load whose latch is `done` out of the map, if it
    /// is still there (a fence may have taken it, and another load of the
    /// key may be there).
    pub(crate) fn leave_blocking(&self, key: &K, done: &Arc<Latch>) {
        self.blocking
            .remove_if(key, |_, slot| Arc::ptr_eq(&slot.done, done));
    }

    /// Fences the fetches of `key`, async and blocking, if any are under
    /// way: they will install nothing, and leave the maps so that no one
    /// joins them any more. Called before and after the key is removed
    /// from the store.
    pub(crate) fn fence<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.flights.remove_if(key, |_, slot| {
            slot.fence.store(true, Ordering::SeqCst);
            true
        });
        self.blocking.remove_if(key, |_, slot| {
            slot.fence.store(true, Ordering::SeqCst);
            true
        });
    }

    /// Fences every fetch under way; for `clear`. Flags only: taking the
    /// slots out here would drop their keys under the maps' locks. A fenced
    /// slot is replaced by the next caller of its key, and removed by its
    /// own fetch when that ends.
    pub(crate) fn fence_all(&self) {
        self.flights
            .iter()
            .for_each(|slot| slot.fence.store(true, Ordering::SeqCst));
        self.blocking
            .iter()
            .for_each(|slot| slot.fence.store(true, Ordering::SeqCst));
    }
}

/// A new blocking load by `loader`: its slot for the map, and its role.
fn new_load(loader: ThreadId) -> (BlockingSlot, LoadRole) {
    let done = Arc::new(Latch::default());
    let fence = Arc::new(AtomicBool::new(false));
    let slot = BlockingSlot {
        done: Arc::clone(&done),
        loader,
        fence: Arc::clone(&fence),
    };
    (slot, LoadRole::Load(done, fence))
}
