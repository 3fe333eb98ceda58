//! The refresher's side of a shard: every entry is either filed by when it
//! goes stale (`Due`) or *held* by the refresher (taken out while its
//! refresh is under way or waiting).
//!
//! Values carry their own TTLs, so write order is not stale order; a
//! hierarchical timer wheel files each entry by its deadline in O(1) and
//! gives back the ones past it in O(due), as Caffeine's `TimerWheel` does
//! (the design is that one's; the code is this crate's). Five levels of 64
//! buckets, each bucket of a level as long as the level below whole:
//! about 1 ms, 67 ms, 4.3 s, 4.6 min and 4.9 h (`SHIFTS`), so the top
//! level spans 13 days and an entry due later waits in its top bucket and
//! is filed again each time that bucket comes round. An entry sits in the
//! lowest level whose span holds the time from the wheel's time to its
//! deadline, in the bucket of its deadline. Advancing the wheel to `now`
//! empties, level by level, the buckets whose time has come (their ticks
//! from the wheel's last time to `now`, at most a whole level), moving
//! each entry past its deadline to the `ready` list and filing every other
//! one again, lower down: each entry is touched at most once per level on
//! its way down, and a look touches only what moved. Entries that never go
//! stale wait in a list of their own.
//!
//! Lists are circular, doubly linked, by slab index, each with a sentinel
//! of its own (indices from [`SENTINEL`] up name them), so an entry leaves
//! whatever list holds it in O(1) without knowing which. Indices only: the
//! shard (which owns the nodes) says when each entry is due, through the
//! `deadline` function the wheel is handed when it must file entries again.

use super::queue::{Link, NIL};
use crate::clock::Nanos;
use crate::freshness::NEVER;

/// Link indices from here up are the lists' sentinels.
pub(crate) const SENTINEL: u32 = 1 << 31;
/// The entries past their deadline, in the order found, the refresher's
/// next first.
const READY: u32 = 0;
/// The entries that never go stale.
const TIMELESS: u32 = 1;
/// The first bucket of the wheel's lowest level.
const WHEEL: u32 = 2;
const LEVELS: usize = 5;
const BUCKETS: u32 = 64;
/// Each level's bucket length, as a power of two of nanoseconds: 2^20
/// (1.05 ms), then 64 times longer per level.
const SHIFTS: [u32; LEVELS] = [20, 26, 32, 38, 44];
const LISTS: u32 = WHEEL + LEVELS as u32 * BUCKETS;

/// When each entry the refresher does not hold goes stale, filed so that
/// those past it are found in O(due).
pub(crate) struct Due {
    /// Each slab slot's place in its list; unlinked while held.
    links: Vec<Link>,
    /// The lists' sentinels; allocated with the first slot.
    lists: Vec<Link>,
    /// The time the wheel was last advanced to.
    time: Nanos,
}

impl Due {
    pub(crate) const fn new() -> Self {
        Self {
            links: Vec::new(),
            lists: Vec::new(),
            time: 0,
        }
    }

    /// A new slab slot at the end, in no list yet (held until filed), at
    /// `now`: the wheel's first slot starts its time there, so that its
    /// first advance does not pass every bucket since the clock's start.
    pub(crate) fn push_slot(&mut self, now: Nanos) {
        if self.lists.is_empty() {
            self.time = self.time.max(now);
            self.lists = (0..LISTS)
                .map(|l| Link {
                    prev: SENTINEL | l,
                    next: SENTINEL | l,
                })
                .collect();
        }
        self.links.push(Link::UNLINKED);
    }

    pub(crate) fn reserve_exact(&mut self, more: usize) {
        self.links.reserve_exact(more);
    }

    /// Forgets every slot (the shard emptied).
    pub(crate) fn clear(&mut self) {
        let time = self.time;
        *self = Self::new();
        self.time = time;
    }

    #[inline]
    fn at(&mut self, x: u32) -> &mut Link {
        if x & SENTINEL != 0 {
            &mut self.lists[(x & !SENTINEL) as usize]
        } else {
            &mut self.links[x as usize]
        }
    }

    /// Links slot `i` after `x` (a slot or a sentinel).
    fn link_after(&mut self, x: u32, i: u32) {
        let next = self.at(x).next;
        self.links[i as usize] = Link { prev: x, next };
        self.at(x).next = i;
        self.at(next).prev = i;
    }

    fn push_back(&mut self, list: u32, i: u32) {
        let tail = self.lists[list as usize].prev;
        self.link_after(tail, i);
    }

    fn push_front(&mut self, list: u32, i: u32) {
        self.link_after(SENTINEL | list, i);
    }

    /// Unlinks slot `i`, which a list holds.
    fn unlink(&mut self, i: u32) {
        let Link { prev, next } = self.links[i as usize];
        self.at(prev).next = next;
        self.at(next).prev = prev;
        self.links[i as usize] = Link::UNLINKED;
    }

    /// Files slot `i` (in no list) by `deadline`: ready if past it at the
    /// wheel's time, else in the wheel, or with the timeless.
    fn file(&mut self, i: u32, deadline: Nanos) {
        if deadline == NEVER {
            self.push_back(TIMELESS, i);
        } else if deadline < self.time {
            self.push_back(READY, i);
        } else {
            let delta = deadline - self.time;
            let level = SHIFTS
                .iter()
                .position(|&s| delta < 1 << (s + 6))
                .unwrap_or(LEVELS - 1);
            let bucket = (deadline >> SHIFTS[level]) as u32 % BUCKETS;
            self.push_back(WHEEL + level as u32 * BUCKETS + bucket, i);
        }
    }

    /// The next entry the refresher should take, if any is ready.
    #[inline]
    pub(crate) fn head(&self) -> Option<u32> {
        let first = self.lists.get(READY as usize)?.next;
        (first & SENTINEL == 0).then_some(first)
    }

    /// Whether the refresher holds slot `i`: it is in no list.
    #[inline]
    pub(crate) fn is_held(&self, i: u32) -> bool {
        self.links[i as usize].next == NIL
    }

    /// Slot `i`'s value was just written, to go stale at `deadline` (or at
    /// once, ahead of the ready, if `marked`): filed anew, out of the
    /// refresher's hands if it was held.
    pub(crate) fn written(&mut self, i: u32, deadline: Nanos, marked: bool) {
        if !self.is_held(i) {
            self.unlink(i);
        }
        if marked {
            self.push_front(READY, i);
        } else {
            self.file(i, deadline);
        }
    }

    /// The refresher takes slot `i` (which it does not hold yet).
    pub(crate) fn hold(&mut self, i: u32) {
        self.unlink(i);
    }

    /// Slot `i`, ready but not due after all (the wheel's time is ahead of
    /// the clock that judged it, or its deadline moved later), out of the
    /// ready list into the bucket of the wheel's present tick: the next
    /// advance past that tick files it by its deadline.
    pub(crate) fn postpone(&mut self, i: u32) {
        self.unlink(i);
        let bucket = (self.time >> SHIFTS[0]) as u32 % BUCKETS;
        self.push_back(WHEEL + bucket, i);
    }

    /// Slot `i` back ahead of the ready if the refresher holds it (it is
    /// due); whether it was held.
    pub(crate) fn give_back(&mut self, i: u32) -> bool {
        let held = self.is_held(i);
        if held {
            self.push_front(READY, i);
        }
        held
    }

    /// Slot `i` leaves the shard: out of its list if it was in one.
    pub(crate) fn leave(&mut self, i: u32) {
        if !self.is_held(i) {
            self.unlink(i);
        }
    }

    /// Follows the slab's `swap_remove` of (empty, left) slot `i`: the last
    /// slot's place moves to `i`.
    pub(crate) fn swap_remove(&mut self, i: u32) {
        self.links.swap_remove(i as usize);
        if (i as usize) < self.links.len() && !self.is_held(i) {
            let Link { prev, next } = self.links[i as usize];
            self.at(prev).next = i;
            self.at(next).prev = i;
        }
    }

    /// Advances the wheel to `now`: every entry whose deadline (as
    /// `deadline` says now) is before `now` moves to the ready list, in
    /// bucket order; the others in the buckets passed are filed again.
    pub(crate) fn advance(&mut self, now: Nanos, deadline: impl Fn(u32) -> Nanos) {
        if now <= self.time || self.lists.is_empty() {
            return;
        }
        let before = self.time;
        self.time = now;
        for (level, &shift) in SHIFTS.iter().enumerate() {
            let (from, to) = (before >> shift, now >> shift);
            if from == to {
                // The levels above tick slower still.
                break;
            }
            let steps = (to - from + 1).min(u64::from(BUCKETS));
            for step in 0..steps {
                let bucket = (from + step) as u32 % BUCKETS;
                self.refile(WHEEL + level as u32 * BUCKETS + bucket, &deadline);
            }
        }
    }

    /// Empties `list` and files each of its entries again, by `deadline`.
    fn refile(&mut self, list: u32, deadline: &impl Fn(u32) -> Nanos) {
        let sentinel = SENTINEL | list;
        let mut at = self.lists[list as usize].next;
        if at == sentinel {
            return;
        }
        self.lists[list as usize] = Link {
            prev: sentinel,
            next: sentinel,
        };
        while at != sentinel {
            let next = self.links[at as usize].next;
            self.links[at as usize] = Link::UNLINKED;
            self.file(at, deadline(at));
            at = next;
        }
    }

    /// Files every entry not held again, by `deadline` (the cache's TTL
    /// changed, so deadlines did).
    pub(crate) fn refile_all(&mut self, deadline: impl Fn(u32) -> Nanos) {
        for i in 0..self.links.len() as u32 {
            if !self.is_held(i) {
                self.unlink(i);
                self.file(i, deadline(i));
            }
        }
    }

    /// Checks the lists over `n` slots; which slots they hold (the others
    /// are held by the refresher).
    pub(crate) fn validate(&self, n: usize) -> Result<Vec<bool>, String> {
        if self.links.len() != n {
            return Err(format!("{} due links for {n} nodes", self.links.len()));
        }
        let get = |x: u32| {
            if x & SENTINEL != 0 {
                self.lists.get((x & !SENTINEL) as usize)
            } else {
                self.links.get(x as usize)
            }
        };
        let mut in_due = vec![false; n];
        for list in 0..self.lists.len() as u32 {
            let sentinel = SENTINEL | list;
            let mut at = self.lists[list as usize].next;
            let mut prev = sentinel;
            while at != sentinel {
                let Some(link) = get(at).filter(|_| at & SENTINEL == 0) else {
                    return Err(format!("list {list} links to {at:#x}, not a slot"));
                };
                if link.prev != prev {
                    return Err(format!("slot {at} in list {list} does not link back"));
                }
                if std::mem::replace(&mut in_due[at as usize], true) {
                    return Err(format!("slot {at} is in due twice (or a list loops)"));
                }
                prev = at;
                at = link.next;
            }
            if self.lists[list as usize].prev != prev {
                return Err(format!("list {list}'s tail is not its last slot"));
            }
        }
        for (i, &linked) in in_due.iter().enumerate() {
            if linked == self.is_held(i as u32) {
                return Err(format!("slot {i}'s link disagrees with its lists"));
            }
        }
        Ok(in_due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Nanos = 1_000_000;

    fn due(deadlines: &[Nanos]) -> Due {
        let mut due = Due::new();
        for (i, &d) in deadlines.iter().enumerate() {
            due.push_slot(0);
            due.written(i as u32, d, false);
        }
        due
    }

    fn take_ready(due: &mut Due) -> Vec<u32> {
        let mut out = Vec::new();
        while let Some(i) = due.head() {
            due.hold(i);
            out.push(i);
        }
        out
    }

    #[test]
    fn entries_come_out_once_past_their_own_deadlines() {
        let deadlines = [
            5 * MS,
            3_600_000 * MS,
            70 * MS,
            NEVER,
            4_500 * MS,
            20 * 86_400_000 * MS,
        ];
        let mut due = due(&deadlines);
        due.validate(deadlines.len()).unwrap();
        let at = |d: &Due| d.time;
        let mut seen = Vec::new();
        for now in [MS, 6 * MS, 71 * MS, 5_000 * MS, 3_600_001 * MS] {
            due.advance(now, |i| deadlines[i as usize]);
            assert_eq!(at(&due), now);
            let got = take_ready(&mut due);
            for &i in &got {
                assert!(deadlines[i as usize] < now, "{i} came out early at {now}");
            }
            seen.extend(got);
            for (i, &d) in deadlines.iter().enumerate() {
                assert_eq!(
                    d < now,
                    seen.contains(&(i as u32)),
                    "slot {i} (due {d}) at {now}"
                );
            }
        }
        assert_eq!(seen, vec![0, 2, 4, 1], "each in its own order");
        due.advance(21 * 86_400_000 * MS, |i| deadlines[i as usize]);
        assert_eq!(take_ready(&mut due), vec![5], "past the top level's span");
        due.validate(deadlines.len()).unwrap();
    }

    #[test]
    fn a_deadline_moved_earlier_is_found_after_refiling() {
        let mut deadlines = vec![10_000 * MS, 20_000 * MS];
        let mut due = due(&deadlines);
        deadlines[1] = 2 * MS;
        due.refile_all(|i| deadlines[i as usize]);
        due.advance(3 * MS, |i| deadlines[i as usize]);
        assert_eq!(take_ready(&mut due), vec![1]);
    }

    #[test]
    fn held_slots_are_out_and_given_back_ahead_and_swap_remove_follows() {
        let deadlines = [MS, 2 * MS, 3 * MS, NEVER];
        let mut due = due(&deadlines);
        due.advance(10 * MS, |i| deadlines[i as usize]);
        assert_eq!(due.head(), Some(0));
        due.hold(0);
        assert!(due.is_held(0));
        due.validate(4).unwrap();
        assert!(due.give_back(0));
        assert!(!due.give_back(0), "not held twice");
        due.written(2, 0, true);
        assert_eq!(due.head(), Some(2), "marked: ahead of the ready");
        // Slot 1 leaves; the last slot (3, timeless) takes its index.
        due.leave(1);
        due.swap_remove(1);
        due.validate(3).unwrap();
        assert_eq!(take_ready(&mut due), vec![2, 0]);
        due.advance(u64::MAX - 1, |_| NEVER);
        assert!(due.head().is_none(), "the timeless never come out");
    }

    /// (Measured: the refresher's first look at a million entries refiled
    /// every one of them, 110 ms, as the wheel's time started at the
    /// clock's zero rather than at its first write.)
    #[test]
    fn the_wheel_starts_at_its_first_slot_and_clear_keeps_its_time() {
        let mut due = Due::new();
        due.push_slot(7 * MS);
        assert_eq!(due.time, 7 * MS);
        due.written(0, 8 * MS, false);
        due.clear();
        due.push_slot(0);
        assert_eq!(due.time, 7 * MS, "never back");
    }

    /// (Review.) The wheel's time may run ahead of the clock that judges
    /// staleness (a write's stamp is the coarse time plus a tick period):
    /// an entry filed ready but not yet stale went back to the ready list
    /// at once, and each look spent its budget on it. Postponed, it waits
    /// in the present tick's bucket and comes out once past its deadline.
    #[test]
    fn a_postponed_entry_waits_for_the_next_tick_then_comes_out() {
        let mut due = Due::new();
        due.push_slot(10 * MS);
        due.written(0, 9 * MS, false);
        assert_eq!(due.head(), Some(0), "before the wheel's time: ready");
        due.postpone(0);
        assert_eq!(due.head(), None);
        due.validate(1).unwrap();
        due.advance(10 * MS + 1, |_| 9 * MS);
        assert_eq!(due.head(), None, "the same tick: still waiting");
        due.advance(12 * MS, |_| 11 * MS);
        assert_eq!(due.head(), Some(0), "past the tick and its deadline");
    }

    #[test]
    fn many_deadlines_in_one_bucket_all_come_out() {
        let n = 2_000;
        let deadlines: Vec<Nanos> = (0..n).map(|i| 4_000 * MS + i * 37 * MS).collect();
        let mut due = due(&deadlines);
        let mut out = 0;
        let mut now = 0;
        while out < n as usize {
            now += 250 * MS;
            due.advance(now, |i| deadlines[i as usize]);
            out += take_ready(&mut due).len();
            assert!(now < 100_000 * MS, "stuck at {out}");
        }
        due.validate(n as usize).unwrap();
    }
}
