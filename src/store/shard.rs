//! One shard's writers' state: its slab of entries and its whole eviction
//! policy, behind the shard's lock in the [store](super). Every method takes
//! `&mut self` and the shard's [`Index`] (its published table, which readers
//! search without a lock), so the lock covers the slab, the table's
//! writers' side, both queues, the ghost, the sketch and the totals at once;
//! nothing another shard can see.
//!
//! # The policy: S3-FIFO with frequency duels
//!
//! Entries sit in one of two FIFO queues: the *small* queue (probation, 5 %
//! of the shard's weight to start with, then what the cache's climber sets,
//! 0.5–80 %: `climber.rs`) and the *main* queue (the rest), which is a CLOCK:
//! its head entry is passed to the back while it has reads to spend. Hits
//! raise a small saturating counter in the entry ([`Meta::touch`]), and only
//! that: readers never move entries. A ghost remembers the fingerprints of
//! keys recently evicted from probation, and a frequency sketch counts, for
//! every key, how often it was wanted lately (each miss, and the reads an
//! entry collected, folded in as a queue passes it).
//!
//! - A new key enters the small queue. A key the ghost remembers has shown
//!   that it comes back: it asks for a place in main at once, and gets it if
//!   the sketch rates it above the entry main would evict; otherwise it is a
//!   newcomer like any other.
//! - To make room, while main holds no more than its share, the small
//!   queue's oldest entry leaves probation: read twice or more, it moves to
//!   main; read less, it moves to main only by winning the same duel against
//!   main's next victim (the victim then goes), and otherwise it is evicted
//!   and remembered by the ghost. One-hit keys (a scan) thus pass through
//!   probation without disturbing main, and keys that recur (a loop a bit
//!   larger than the cache) keep the place their frequency earns.
//! - Once main holds more than its share, its CLOCK hand evicts: an entry
//!   with reads left spends one and passes to the back, one without goes.
//! - Until the shard first evicts, a new key finding probation full enters
//!   main directly, so a cache that is filling keeps what it has; and
//!   whenever main holds less than its share (after invalidations, or with
//!   weights), an entry leaving probation moves to main without a duel.
//!
//! Each step evicts, moves an entry out of probation, or spends a read, so
//! making room ends, and costs O(1) amortized while no one reads. Readers
//! take no lock and may raise counters as the hand turns, so it stops after
//! enough turns to spend every counter three times and evicts its head
//! regardless: an eviction among entries read all the time costs at most
//! four turns of main. The design was chosen by
//! replaying 21 real and synthetic traces against S3-FIFO, quick_cache and
//! moka (`docs/design.md`, *Eviction*).
//!
//! Entries live in a dense slab (`nodes`) of owned node pointers, named by
//! index (each node knows its own). Removing one moves the last node into
//! its place (`swap_remove`) and repoints the queue links and the moved
//! node's index, so the slab has no holes between writes; a new key
//! evicting one takes the victim's slot over instead.
//!
//! [`Meta::touch`]: super::node::Meta::touch

use super::climber::{MAX_PERMILLE, MIN_PERMILLE, START_PERMILLE};
use super::due::Due;
use super::ghost::Ghost;
use super::node::{Born, CHANGES, MAX_FREQ, Node, Version, changed_from};
use super::published::{Index, Owned, Unlinked};
use super::queue::{Link, Queue};
use super::removed::Removed;
use super::sketch::Sketch;
use crate::clock::Nanos;
use crate::freshness::{Own, Terms};
use crate::removal::RemovalCause;

/// New entries between two of the cache's climber's looks at its hit
/// ratio (see `climber.rs`), counted by each shard under its lock.
const CLIMB_EVERY: u32 = 256;
/// Reads during probation that earn a place in main without a duel.
const PROMOTE_AT: u8 = 2;
/// How many evicted keys the ghost remembers, in percent of the entries the
/// shard held when it first evicted.
const GHOST_PERCENT: usize = 90;
/// The most entries a shard numbers (indices are 31 bits: `due`'s lists
/// name their sentinels with the top bit).
const MAX_ENTRIES: usize = super::due::SENTINEL as usize - 1;

/// An entry to write, weighed (at least 1) and stamped before the lock.
pub(crate) struct Entry<K, V> {
    pub(crate) key: K,
    pub(crate) value: V,
    pub(crate) weight: u64,
    pub(crate) now: Nanos,
    /// Written stale whatever its age (a snapshot loaded as stale).
    pub(crate) stale: bool,
    /// Its own freshness, or the cache's.
    pub(crate) own: Own,
}

/// How a write treats the key's present entry and a full shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Write {
    /// Replaces a present value; a new key evicts to make room.
    Upsert,
    /// Leaves a present value alone; a new key evicts to make room.
    IfAbsent,
    /// Replaces a present value; a new key is added only if there is room.
    IfRoom,
}

/// Why a write stored nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// [`Write::IfAbsent`] found the key present.
    Present,
    /// [`Write::IfRoom`] found the shard full.
    Full,
    /// The entry alone weighs more than the shard holds. A present value of
    /// the key was removed (reported as replaced).
    Overweight,
    /// The write's fence was set: the key was invalidated since the value
    /// was fetched.
    Fenced,
}

/// What a write did.
#[derive(Debug)]
pub(crate) enum Written<K, V> {
    /// A new entry was added.
    Added,
    /// The key's value was replaced; the old one is among the removed.
    Replaced,
    /// Nothing was stored; the key and value come back, to be dropped (or
    /// reported) outside the lock.
    Refused(K, V, Refusal),
}

/// A refresh's result, for [`Shard::install`].
pub(crate) enum Install<K, V> {
    /// A new value, weighing this much, with the key it is for (the new
    /// node's own copy), and its freshness (`None`: the entry's, kept).
    Value(K, V, u64, Option<Own>),
    /// The value is still right: only its age starts over, with this
    /// freshness (`None`: the entry's, kept).
    Renew(Option<Own>),
}

/// What an install did.
pub(crate) enum Installed<'s, K, V> {
    /// Installed; the node it replaced, if any (to be reported outside
    /// the lock), and whether that value was marked stale (the refresh
    /// answers a mark, not an age).
    Done {
        replaced: Option<Unlinked<'s, K, V>>,
        was_marked: bool,
    },
    /// The entry is gone or was written since the fetch started: nothing
    /// changed. A key and value come back to be dropped outside the lock.
    Superseded(Option<(K, V)>),
    /// The new value alone weighs more than the shard holds: the entry was
    /// removed (its old value is among the removed), and the new key and
    /// value come back.
    Overweight(K, V),
}

pub(crate) struct Shard<K, V> {
    /// The nodes, each published in the shard's table. `None` only for a
    /// moment inside a write: the slot of a victim whose place a new entry
    /// takes, or which is about to be vacated.
    nodes: Vec<Option<Owned<K, V>>>,
    /// Each node's place in its queue, by index.
    links: Vec<Link>,
    /// The nodes the refresher does not hold, filed by when they go stale
    /// ([`Due`]) under `terms`.
    due: Due,
    /// The cache's terms as this shard last heard them ([`Shard::refile`]):
    /// every filing and every look uses this copy, under the lock, so that
    /// none files by terms older than the shard's last refile.
    terms: Terms,
    /// Each node's weight, by index, when the cache has a weigher; empty
    /// otherwise, and every entry weighs 1.
    weights: Vec<u64>,
    weighted: bool,
    small: Queue,
    main: Queue,
    ghost: Ghost,
    sketch: Sketch,
    /// Whether the shard has evicted since it was built, cleared or resized.
    evicted: bool,
    /// The small queue's share of the capacity, in permille: the cache's
    /// climber's ([`Shard::set_small_share`]).
    small_permille: u32,
    /// New entries since the climber was last asked to look.
    adds: u32,
    /// The most weight (without a weigher: entries) the shard holds.
    capacity: u64,
    /// The refresher task that may take entries from this shard: a task
    /// that starts gives back what others held and claims the shard with
    /// its number, so a task stopping late can take nothing more.
    refresher: u64,
    next_version: Version,
}

impl<K, V> Shard<K, V> {
    pub(crate) fn new(capacity: u64, weighted: bool, terms: Terms) -> Self {
        Self {
            nodes: Vec::new(),
            links: Vec::new(),
            due: Due::new(),
            terms,
            weights: Vec::new(),
            weighted,
            small: Queue::new(),
            main: Queue::new(),
            ghost: Ghost::new(0),
            sketch: Sketch::new(),
            evicted: false,
            small_permille: START_PERMILLE,
            adds: 0,
            capacity,
            refresher: 0,
            next_version: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    /// The sum of the entries' weights.
    pub(crate) fn weight(&self) -> u64 {
        self.small.weight() + self.main.weight()
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Node `i` of the slab.
    #[inline]
    fn node(&self, i: u32) -> &Node<K, V> {
        self.nodes[i as usize]
            .as_deref()
            .expect("a slab slot holds a node between writes")
    }

    /// The slab index of the entry whose key has `fingerprint` and passes
    /// `is_key`.
    fn index_of(
        ix: &Index<'_, '_, K, V>,
        fingerprint: u32,
        mut is_key: impl FnMut(&K) -> bool,
    ) -> Option<u32> {
        ix.find(fingerprint, |n| is_key(&n.key)).map(Node::slot)
    }

    fn weight_of(&self, i: u32) -> u64 {
        if self.weighted {
            self.weights[i as usize]
        } else {
            1
        }
    }

    /// The version for a user's write (a new key, or a replaced value).
    fn version(&mut self) -> Version {
        self.next_version = self.next_version.wrapping_add(CHANGES + 1);
        self.next_version
    }

    fn queue_of(&mut self, i: u32) -> &mut Queue {
        if self.node(i).meta.in_main() {
            &mut self.main
        } else {
            &mut self.small
        }
    }

    /// Writes `entry` as `how` says. Entries evicted or replaced go to
    /// `out`.
    ///
    /// Comparing keys (`Eq`) is the only user code this runs, and it runs
    /// before anything changes.
    pub(crate) fn write<'s>(
        &mut self,
        ix: &mut Index<'_, 's, K, V>,
        fingerprint: u32,
        entry: Entry<K, V>,
        how: Write,
        out: &mut Removed<'s, K, V>,
    ) -> Written<K, V>
    where
        K: Eq,
    {
        let present = Self::index_of(ix, fingerprint, |k| *k == entry.key);
        if present.is_some() && how == Write::IfAbsent {
            return Written::Refused(entry.key, entry.value, Refusal::Present);
        }
        if entry.weight > self.capacity {
            if let Some(i) = present {
                out.push(self.detach(ix, i), RemovalCause::Replaced);
            }
            return Written::Refused(entry.key, entry.value, Refusal::Overweight);
        }
        if let Some(i) = present {
            let old_weight = self.weight_of(i);
            // A write by the user is a use of the key.
            let freq = self.node(i).meta.freq().saturating_add(1).min(MAX_FREQ);
            let born = Born {
                fingerprint,
                version: self.version(),
                now: entry.now,
                slot: i,
                freq,
                in_main: self.node(i).meta.in_main(),
                stale: entry.stale,
                own: entry.own,
            };
            let owner = self.nodes[i as usize].as_mut().expect("present");
            let old = ix.replace(owner, Node::new(entry.key, entry.value, born));
            self.file(i);
            if self.weighted {
                self.weights[i as usize] = entry.weight;
                self.queue_of(i).reweigh(old_weight, entry.weight);
            }
            out.push(old, RemovalCause::Replaced);
            self.evict_while_over(ix, 0, out);
            return Written::Replaced;
        }
        if how == Write::IfRoom && self.over(entry.weight) {
            return Written::Refused(entry.key, entry.value, Refusal::Full);
        }
        let entries = self.nodes.len() + 1;
        if self.sketch.outgrown_by(entries) {
            // Doubled, but not past the entries the shard can hold, where
            // it keeps a word per entry and halves every 10 x entries.
            let most = usize::try_from(self.capacity).unwrap_or(usize::MAX);
            let (target, period) = if self.weighted {
                (2 * entries, 2 * entries)
            } else {
                ((2 * entries).min(most).max(entries), most)
            };
            let fingerprints = self.nodes.iter().flatten().map(|n| n.fingerprint);
            self.sketch = self.sketch.grown(target, period, fingerprints);
        }
        self.sketch.increment(fingerprint);
        let (hole, to_main) = self.admit(ix, fingerprint, entry.weight, out);
        self.add(ix, hole, to_main, fingerprint, entry);
        Written::Added
    }

    /// Installs a refresh's result over the entry of `key`, if it still has
    /// `version` (the one the fetch started from).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn install<'s>(
        &mut self,
        ix: &mut Index<'_, 's, K, V>,
        fingerprint: u32,
        is_key: impl FnMut(&K) -> bool,
        from: Version,
        update: Install<K, V>,
        now: Nanos,
        out: &mut Removed<'s, K, V>,
    ) -> Installed<'s, K, V> {
        let current =
            Self::index_of(ix, fingerprint, is_key).filter(|&i| self.node(i).version() == from);
        let Some(i) = current else {
            return Installed::Superseded(match update {
                Install::Value(key, value, ..) => Some((key, value)),
                Install::Renew(_) => None,
            });
        };
        let version = changed_from(from);
        match update {
            Install::Renew(own) => {
                let node = self.node(i);
                let own = own.unwrap_or_else(|| node.own());
                let was_marked = node.meta.is_marked_stale();
                node.renew(now, own);
                node.set_version(version);
                self.file(i);
                Installed::Done {
                    replaced: None,
                    was_marked,
                }
            }
            Install::Value(key, value, weight, _) if weight > self.capacity => {
                out.push(self.detach(ix, i), RemovalCause::Replaced);
                Installed::Overweight(key, value)
            }
            Install::Value(key, value, weight, own) => {
                let old_weight = self.weight_of(i);
                let node = self.node(i);
                let own = own.unwrap_or_else(|| node.own());
                let was_marked = node.meta.is_marked_stale();
                let born = Born {
                    fingerprint,
                    version,
                    now,
                    slot: i,
                    freq: node.meta.freq(),
                    in_main: node.meta.in_main(),
                    stale: false,
                    own,
                };
                let owner = self.nodes[i as usize].as_mut().expect("present");
                let old = ix.replace(owner, Node::new(key, value, born));
                self.file(i);
                if self.weighted {
                    self.weights[i as usize] = weight;
                    self.queue_of(i).reweigh(old_weight, weight);
                    self.evict_while_over(ix, 0, out);
                }
                Installed::Done {
                    replaced: Some(old),
                    was_marked,
                }
            }
        }
    }

    /// Marks the value of `key` stale whatever its age, until it is next
    /// written: as a new version (so a refresh under way, fetched from the
    /// value before, installs nothing), but not a user's write (so
    /// `retain` and `invalidate_if` still remove it), at `due`'s head, out
    /// of the refresher's hands and askable for again, so that the next
    /// stale read or look refreshes it. False if `key` is absent.
    pub(crate) fn mark_stale(
        &mut self,
        ix: &Index<'_, '_, K, V>,
        fingerprint: u32,
        is_key: impl FnMut(&K) -> bool,
    ) -> bool {
        let Some(i) = Self::index_of(ix, fingerprint, is_key) else {
            return false;
        };
        self.mark_node_stale(i);
        true
    }

    /// [`Shard::mark_stale`] for every entry.
    pub(crate) fn mark_all_stale(&mut self) {
        for i in 0..self.nodes.len() as u32 {
            self.mark_node_stale(i);
        }
    }

    fn mark_node_stale(&mut self, i: u32) {
        let node = self.node(i);
        node.set_version(changed_from(node.version()));
        node.meta.mark_stale();
        node.meta.clear_nudged();
        self.due.written(i, 0, true);
    }

    /// Files node `i`, just written, by when it goes stale under the
    /// shard's terms (at once if written stale).
    fn file(&mut self, i: u32) {
        let marked = self.node(i).meta.is_marked_stale();
        let deadline = Self::deadline(&self.nodes, self.terms, i);
        self.due.written(i, deadline, marked);
    }

    /// When node `i` of `nodes` is due under `terms`: at once if marked
    /// stale, else when it goes stale by age.
    fn deadline(nodes: &[Option<Owned<K, V>>], terms: Terms, i: u32) -> Nanos {
        let node = nodes[i as usize]
            .as_deref()
            .expect("a slab slot holds a node between writes");
        if node.meta.is_marked_stale() {
            0
        } else {
            node.stale_at(terms)
        }
    }

    /// Takes `terms` as the cache's from now on and files every entry not
    /// held again by them: the cache's changed.
    pub(crate) fn refile(&mut self, terms: Terms) {
        self.terms = terms;
        let nodes = &self.nodes;
        self.due.refile_all(|i| Self::deadline(nodes, terms, i));
    }

    /// Removes the entry of `key`, if it passes `remove_if`.
    pub(crate) fn remove<'s>(
        &mut self,
        ix: &mut Index<'_, 's, K, V>,
        fingerprint: u32,
        is_key: impl FnMut(&K) -> bool,
        remove_if: impl FnOnce(&Node<K, V>) -> bool,
    ) -> Option<Unlinked<'s, K, V>> {
        let i = Self::index_of(ix, fingerprint, is_key)?;
        if !remove_if(self.node(i)) {
            return None;
        }
        Some(self.detach(ix, i))
    }

    /// Empties the shard; the entries go to `out`.
    pub(crate) fn clear<'s>(&mut self, ix: &mut Index<'_, 's, K, V>, out: &mut Removed<'s, K, V>) {
        out.reserve(self.nodes.len());
        for node in std::mem::take(&mut self.nodes).into_iter().flatten() {
            out.push(ix.unpublish(node), RemovalCause::Cleared);
        }
        ix.forget_table();
        self.links = Vec::new();
        self.due.clear();
        self.weights = Vec::new();
        self.small.clear();
        self.main.clear();
        self.forget_history();
    }

    /// Forgets the ghost (sized again at the next eviction) and the sketch
    /// (grown again as entries come).
    fn forget_history(&mut self) {
        self.ghost.reset(0);
        self.sketch.reset();
        self.evicted = false;
    }

    /// Sets the shard's capacity, evicting down to it.
    pub(crate) fn set_capacity<'s>(
        &mut self,
        ix: &mut Index<'_, 's, K, V>,
        capacity: u64,
        out: &mut Removed<'s, K, V>,
    ) {
        self.capacity = capacity;
        self.evict_while_over(ix, 0, out);
        self.forget_history();
        if self.nodes.is_empty() {
            ix.forget_table();
            self.nodes = Vec::new();
            self.links = Vec::new();
            self.due.clear();
            self.weights = Vec::new();
        }
    }

    /// Whether `incoming` more weight (for a new entry, at least 1) would
    /// put the shard over its capacity, or over the entries it can number.
    fn over(&self, incoming: u64) -> bool {
        // Weights and capacities are at most MAX_WEIGHT_LIMIT, a quarter of
        // u64, so these sums cannot wrap.
        self.weight() + incoming > self.capacity
            || (incoming > 0 && self.small.len() + self.main.len() >= MAX_ENTRIES)
    }

    /// Makes room for a new key of `weight`, and says which queue it enters:
    /// returns the slot of the last victim (out of the table and the queues,
    /// still in the slab, for the new entry to take over) and whether the
    /// new key goes to main.
    fn admit<'s>(
        &mut self,
        ix: &mut Index<'_, 's, K, V>,
        fingerprint: u32,
        weight: u64,
        out: &mut Removed<'s, K, V>,
    ) -> (Option<u32>, bool) {
        let returning = self.ghost.take(fingerprint);
        if !self.over(weight) {
            // Room to spare: a returning key goes to main, and so does any
            // key while probation is full before the first eviction.
            let warming = !self.evicted && self.small.weight() + weight > self.small_share();
            return (None, returning || warming);
        }
        let mut hole = None;
        let mut to_main = false;
        if returning {
            if let Some(victim) = self.main_victim() {
                if self.sketch.estimate(fingerprint)
                    > self.sketch.estimate(self.node(victim).fingerprint)
                {
                    // Won its place: the victim goes, not to the ghost.
                    out.push(self.unindex(ix, victim), RemovalCause::Evicted);
                    hole = Some(victim);
                    to_main = true;
                }
            }
        }
        (self.make_room(ix, weight, hole, out), to_main)
    }

    /// The small queue's share of the shard's weight.
    fn small_share(&self) -> u64 {
        let permille = u64::from(self.small_permille);
        (self.capacity / 1_000 * permille + self.capacity % 1_000 * permille / 1_000).max(1)
    }

    /// Sets the small queue's share, in permille (the climber's).
    pub(crate) fn set_small_share(&mut self, permille: u32) {
        self.small_permille = permille.clamp(MIN_PERMILLE, MAX_PERMILLE);
    }

    /// Whether the climber should look now: every [`CLIMB_EVERY`] new
    /// entries of this shard.
    pub(crate) fn take_climb(&mut self) -> bool {
        if self.adds < CLIMB_EVERY {
            return false;
        }
        self.adds = 0;
        true
    }

    /// Evicts until `incoming` more weight fits, starting from `hole` (a
    /// victim's slab slot, already emptied). The last victim's slot is left
    /// empty and its index returned: a new entry takes the slot over,
    /// sparing the slab a move.
    fn make_room<'s>(
        &mut self,
        ix: &mut Index<'_, 's, K, V>,
        incoming: u64,
        mut hole: Option<u32>,
        out: &mut Removed<'s, K, V>,
    ) -> Option<u32> {
        while self.over(incoming) {
            if let Some(h) = hole.take() {
                self.vacate(h);
            }
            let Some((i, remember)) = self.pick_victim() else {
                break;
            };
            if remember {
                self.ghost.insert(self.node(i).fingerprint);
            }
            out.push(self.unindex(ix, i), RemovalCause::Evicted);
            hole = Some(i);
        }
        hole
    }

    /// Evicts until `incoming` more weight fits, when nothing is added.
    fn evict_while_over<'s>(
        &mut self,
        ix: &mut Index<'_, 's, K, V>,
        incoming: u64,
        out: &mut Removed<'s, K, V>,
    ) {
        if let Some(h) = self.make_room(ix, incoming, None, out) {
            self.vacate(h);
        }
    }

    /// Adds a new entry in `hole` (an empty slot from
    /// [`Shard::make_room`]) or at the end of the slab, in main or in
    /// probation, and publishes it.
    fn add(
        &mut self,
        ix: &mut Index<'_, '_, K, V>,
        hole: Option<u32>,
        to_main: bool,
        fingerprint: u32,
        entry: Entry<K, V>,
    ) {
        let Entry {
            key,
            value,
            weight,
            now,
            stale,
            own,
        } = entry;
        self.adds = self.adds.saturating_add(1);
        let i = match hole {
            Some(h) => {
                if self.weighted {
                    self.weights[h as usize] = weight;
                }
                h
            }
            None => {
                if self.nodes.len() == self.nodes.capacity() && !self.weighted {
                    // Double, as a Vec does, but never past the most entries
                    // the shard holds: a full shard has no slack.
                    let len = self.nodes.len();
                    let most = usize::try_from(self.capacity).unwrap_or(usize::MAX);
                    let more = len.max(4).min(most.saturating_sub(len)).max(1);
                    self.nodes.reserve_exact(more);
                    self.links.reserve_exact(more);
                    self.due.reserve_exact(more);
                }
                self.nodes.push(None);
                self.links.push(Link::UNLINKED);
                self.due.push_slot(now);
                if self.weighted {
                    self.weights.push(weight);
                }
                (self.nodes.len() - 1) as u32
            }
        };
        let born = Born {
            fingerprint,
            version: self.version(),
            now,
            slot: i,
            freq: 0,
            in_main: to_main,
            stale,
            own,
        };
        // Without a weigher the table need never hold more than the
        // capacity's entries.
        let most = (!self.weighted).then(|| usize::try_from(self.capacity).unwrap_or(usize::MAX));
        self.nodes[i as usize] = Some(ix.publish(Node::new(key, value, born), most));
        let queue = if to_main {
            &mut self.main
        } else {
            &mut self.small
        };
        queue.push_back(&mut self.links, i, weight);
        self.file(i);
    }

    /// Advances the wheel to `now` under the shard's terms.
    fn advance(&mut self, now: Nanos) {
        let (nodes, terms) = (&self.nodes, self.terms);
        self.due.advance(now, |i| Self::deadline(nodes, terms, i));
    }

    /// Hands the refresher the keys of up to `limit` values stale at `now`,
    /// in the order they came due: each node leaves `due`
    /// (it is held now) and is marked as asked for, so readers do not ask
    /// again. The keys are cloned here, under the lock.
    pub(crate) fn take_due(&mut self, refresher: u64, now: Nanos, limit: usize, out: &mut Vec<K>)
    where
        K: Clone,
    {
        if refresher != self.refresher {
            return;
        }
        self.advance(now);
        let mut taken = 0;
        // Bounds the lock hold should the ready list be of values fresh
        // again (the cache's TTL grew since they came due).
        let mut looked = 0;
        while taken < limit && looked < 2 * limit {
            let Some(i) = self.due.head() else { break };
            looked += 1;
            let node = self.node(i);
            if !node.meta.is_stale(now, node.terms(self.terms).ttl) {
                // Not due after all (the wheel's time ran a tick ahead of
                // `now`, or the TTL grew): back in the wheel, to be judged
                // when its tick has passed.
                self.due.postpone(i);
                continue;
            }
            // The key's `Clone` first, before the shard changes.
            out.push(self.node(i).key.clone());
            self.due.hold(i);
            self.node(i).meta.set_nudged();
            taken += 1;
        }
    }

    /// Hands the refresher the key of the node a reader asked it for, named
    /// by fingerprint and version: `None` if that value is gone or already
    /// held.
    pub(crate) fn take_nudged(
        &mut self,
        ix: &Index<'_, '_, K, V>,
        refresher: u64,
        fingerprint: u32,
        version: Version,
    ) -> Option<K>
    where
        K: Clone,
    {
        if refresher != self.refresher {
            return None;
        }
        let i = ix
            .find(fingerprint, |n| n.version() == version)
            .map(Node::slot)?;
        if self.due.is_held(i) {
            return None;
        }
        // The key's `Clone` first, before the shard changes.
        let key = self.node(i).key.clone();
        self.due.hold(i);
        self.node(i).meta.set_nudged();
        Some(key)
    }

    /// Gives node `key` back to `due` (at the head: it is due) if the
    /// refresher holds it; for a refresh that ended without writing it.
    pub(crate) fn release(
        &mut self,
        ix: &Index<'_, '_, K, V>,
        fingerprint: u32,
        is_key: impl FnMut(&K) -> bool,
    ) {
        if let Some(i) = Self::index_of(ix, fingerprint, is_key) {
            self.give_back(i);
        }
    }

    /// Gives every held node back to `due`, at the head, and lets only
    /// refresher number `refresher` take from the shard from now on: for a
    /// refresher that starts (what an earlier one held, it no longer tracks,
    /// and an earlier one stopping late must not take more).
    pub(crate) fn release_all(&mut self, refresher: u64) {
        self.refresher = refresher;
        for i in 0..self.nodes.len() as u32 {
            self.give_back(i);
        }
    }

    /// Node `i`, if held, back at `due`'s head, and askable for again.
    fn give_back(&mut self, i: u32) {
        if self.due.give_back(i) {
            self.node(i).meta.clear_nudged();
        }
    }

    /// The node of `key` if the refresher holds it.
    pub(crate) fn find_held<'i>(
        &self,
        ix: &'i Index<'_, '_, K, V>,
        fingerprint: u32,
        mut is_key: impl FnMut(&K) -> bool,
    ) -> Option<&'i Node<K, V>> {
        ix.find(fingerprint, |n| is_key(&n.key))
            .filter(|n| self.due.is_held(n.slot()))
    }

    /// Picks the next entry to evict by the policy (module docs), moving,
    /// cooling and counting others on the way; with it, whether the ghost
    /// should remember it. `None` if the shard is empty.
    fn pick_victim(&mut self) -> Option<(u32, bool)> {
        if !self.evicted {
            // The first eviction: the shard is full, so its entry count
            // sizes the memory of evicted keys.
            self.evicted = true;
            let entries = self.nodes.len();
            self.ghost.reset((entries * GHOST_PERCENT / 100).max(1));
        }
        let main_share = self.capacity - self.small_share().min(self.capacity);
        loop {
            if self.main.weight() > main_share || self.small.len() == 0 {
                return self.main_victim().map(|i| (i, false));
            }
            while let Some(i) = self.small.head() {
                let (fingerprint, reads) = {
                    let node = self.node(i);
                    (node.fingerprint, node.meta.freq())
                };
                for _ in 0..reads {
                    self.sketch.increment(fingerprint);
                }
                if reads >= PROMOTE_AT || self.main.weight() < main_share {
                    self.promote(i);
                    continue;
                }
                return match self.main_victim() {
                    Some(victim)
                        if self.sketch.estimate(fingerprint)
                            > self.sketch.estimate(self.node(victim).fingerprint) =>
                    {
                        self.promote(i);
                        Some((victim, false))
                    }
                    _ => Some((i, true)),
                };
            }
        }
    }

    /// Main's CLOCK hand: passes entries with reads left to the back, each
    /// spending one (and counting it in the sketch), and stops at the first
    /// without, which it returns (still main's head). `None` if main is empty.
    fn main_victim(&mut self) -> Option<u32> {
        // Readers may raise counters while the hand goes round (they take
        // no lock), so it stops after enough turns to spend every counter
        // three times over, and takes the head whatever its reads.
        for _ in 0..(MAX_FREQ as usize + 1) * self.main.len() {
            let i = self.main.head()?;
            let node = self.node(i);
            if !node.meta.cool() {
                return Some(i);
            }
            let fingerprint = node.fingerprint;
            self.sketch.increment(fingerprint);
            self.main.rotate(&self.links);
        }
        self.main.head()
    }

    /// Moves a small-queue entry to main, its reads spent.
    fn promote(&mut self, i: u32) {
        let weight = self.weight_of(i);
        self.small.unlink(&mut self.links, i, weight);
        let meta = &self.node(i).meta;
        meta.set_in_main(true);
        meta.set_freq(0);
        self.main.push_back(&mut self.links, i, weight);
    }

    /// Takes node `i` out of its queue and the table, leaving its slab
    /// slot empty (a hole to fill or vacate).
    fn unindex<'s>(&mut self, ix: &mut Index<'_, 's, K, V>, i: u32) -> Unlinked<'s, K, V> {
        let weight = self.weight_of(i);
        self.due.leave(i);
        if self.node(i).meta.in_main() {
            self.main.unlink(&mut self.links, i, weight);
        } else {
            self.small.unlink(&mut self.links, i, weight);
        }
        let node = self.nodes[i as usize].take().expect("a node to unindex");
        ix.unpublish(node)
    }

    /// Takes hole `i` out of the slab; the last node moves into its place,
    /// its queue links and its own index following it.
    fn vacate(&mut self, i: u32) {
        let last = (self.nodes.len() - 1) as u32;
        let hole = self.nodes.swap_remove(i as usize);
        debug_assert!(hole.is_none(), "only a hole is vacated");
        self.links.swap_remove(i as usize);
        self.due.swap_remove(i);
        if self.weighted {
            self.weights.swap_remove(i as usize);
        }
        if i != last {
            let moved = self.node(i);
            moved.set_slot(i);
            if moved.meta.in_main() {
                self.main.relocate(&mut self.links, last, i);
            } else {
                self.small.relocate(&mut self.links, last, i);
            }
        }
    }

    /// Takes node `i` out of its queue, the table and the slab.
    fn detach<'s>(&mut self, ix: &mut Index<'_, 's, K, V>, i: u32) -> Unlinked<'s, K, V> {
        let node = self.unindex(ix, i);
        self.vacate(i);
        node
    }

    /// Checks every invariant of the shard; the error says which failed.
    ///
    /// Counts and weights add up; every entry is in exactly one queue, the
    /// one its mark names, and in the table under its own fingerprint at its
    /// own index; the table names nothing else; every entry is in `due` once
    /// or held by the refresher (and then marked as asked for); the weight
    /// is within the capacity; the ghost is consistent and within its size.
    pub(crate) fn validate(&self, ix: &Index<'_, '_, K, V>) -> Result<(), String>
    where
        K: Eq,
    {
        if !(MIN_PERMILLE..=MAX_PERMILLE).contains(&self.small_permille) {
            return Err(format!("small share {} permille", self.small_permille));
        }
        let n = self.nodes.len();
        if ix.len() != n || self.links.len() != n {
            return Err(format!(
                "table has {} entries, links {}, slab {n}",
                ix.len(),
                self.links.len()
            ));
        }
        if let Some(i) = self.nodes.iter().position(Option::is_none) {
            return Err(format!("slab slot {i} is empty between writes"));
        }
        if self.weighted && self.weights.len() != n {
            return Err(format!("{} weights for {n} nodes", self.weights.len()));
        }
        if !self.weighted && !self.weights.is_empty() {
            return Err("weights kept without a weigher".into());
        }
        let mut seen = vec![false; n];
        for (queue, main, name) in [(&self.small, false, "small"), (&self.main, true, "main")] {
            let mut count = 0;
            let mut weight = 0;
            for i in queue.walk(&self.links).take(n + 1) {
                let node = self
                    .nodes
                    .get(i as usize)
                    .and_then(Option::as_deref)
                    .ok_or_else(|| format!("{name} queue links to {i}, past the slab"))?;
                if std::mem::replace(&mut seen[i as usize], true) {
                    return Err(format!("node {i} is queued twice"));
                }
                if node.meta.in_main() != main {
                    return Err(format!("node {i} in the {name} queue is marked otherwise"));
                }
                let next = self.links[i as usize].next;
                if self.links.get(next as usize).map(|l| l.prev) != Some(i) {
                    return Err(format!("node {i}'s next does not link back"));
                }
                count += 1;
                weight += self.weight_of(i);
            }
            if count != queue.len() || weight != queue.weight() {
                return Err(format!(
                    "{name} queue counts {} entries of weight {}, links {count} of {weight}",
                    queue.len(),
                    queue.weight()
                ));
            }
        }
        if let Some(i) = seen.iter().position(|&s| !s) {
            return Err(format!("node {i} is in no queue"));
        }
        let in_due = self.due.validate(n)?;
        for (i, node) in self.nodes.iter().flatten().enumerate() {
            if !in_due[i] && !node.meta.is_nudged() {
                return Err(format!("node {i} is held but not marked as asked for"));
            }
            if node.slot() != i as u32 {
                return Err(format!("node {i} says it is at {}", node.slot()));
            }
            // The first node the table finds for the key must be this one:
            // it is published, and no other node has its key.
            let first = ix.find(node.fingerprint, |n| n.key == node.key);
            if !first.is_some_and(|n| std::ptr::eq(n, &**node)) {
                return Err(format!(
                    "node {i} is not in the table, or its key is filed twice"
                ));
            }
            if self.weighted && self.weights[i] == 0 {
                return Err(format!("node {i} weighs nothing"));
            }
        }
        if self.weight() > self.capacity {
            return Err(format!(
                "weight {} over capacity {}",
                self.weight(),
                self.capacity
            ));
        }
        self.ghost.check()?;
        self.sketch.check()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::published::Shards;
    use super::*;

    fn entry(key: u64, value: u64) -> Entry<u64, u64> {
        Entry {
            key,
            value,
            weight: 1,
            now: 0,
            stale: false,
            own: Own::CACHE,
        }
    }

    fn terms(ttl: Nanos) -> Terms {
        Terms::new(ttl, crate::freshness::NEVER, 0)
    }

    /// (Review of the timer wheel.) A look or a write that filed by the
    /// cache's terms as its caller had loaded them before a `configure`
    /// cut the TTL put entries back at their old deadlines after the
    /// shard's refile: found a day late. The shard files by its own copy
    /// of the terms, which the refile sets, under its lock.
    #[test]
    fn after_a_refile_to_a_shorter_ttl_every_filing_uses_it() {
        const S: Nanos = 1_000_000_000;
        let shards = Shards::new(1, |_| Shard::<u64, u64>::new(10, false, terms(86_400 * S)));
        let mut writer = shards.lock(0);
        let (shard, mut ix) = writer.split();
        let mut out = Removed::new();
        for k in 0..2 {
            shard.write(&mut ix, k as u32, entry(k, k), Write::Upsert, &mut out);
        }
        shard.refile(terms(S));
        shard.write(&mut ix, 2, entry(2, 2), Write::Upsert, &mut out);
        let mut taken = Vec::new();
        shard.take_due(0, 3 * S, 10, &mut taken);
        taken.sort_unstable();
        assert_eq!(taken, [0, 1, 2], "all three, 1 s after their writes");
        shard.validate(&ix).unwrap();
    }

    /// (Review.) With 24 bits for the user's writes in a version, the write
    /// 2^24 after another in a shard took its version again, and a refresh
    /// begun from the first installed over the second. A guard against
    /// narrowing them again (they are 40 bits now).
    #[test]
    fn a_refresh_from_before_2_pow_24_writes_installs_nothing() {
        let shards = Shards::new(1, |_| Shard::<u64, u64>::new(10, false, terms(0)));
        let mut writer = shards.lock(0);
        let (shard, mut ix) = writer.split();
        let mut out = Removed::new();
        shard.write(&mut ix, 7, entry(7, 1), Write::Upsert, &mut out);
        let from = ix.find(7, |n| n.key == 7).unwrap().version();
        // As if 2^24 - 1 writes of other keys had come since.
        let writes: Version = (1 << 24) - 1;
        shard.next_version = shard
            .next_version
            .wrapping_add(writes.wrapping_mul(CHANGES + 1));
        shard.write(&mut ix, 7, entry(7, 2), Write::Upsert, &mut out);
        let update = Install::Value(7, 3, 1, None);
        let installed = shard.install(&mut ix, 7, |&k| k == 7, from, update, 0, &mut out);
        assert!(matches!(installed, Installed::Superseded(Some((7, 3)))));
        assert_eq!(ix.find(7, |n| n.key == 7).unwrap().value, 2);
    }
}
