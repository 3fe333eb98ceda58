//! The refresher's side of a shard: every entry is either in the shard's
//! write order (`Due`, oldest value at the head) or *held* by the refresher
//! (taken out of it while its refresh is under way or waiting).
//!
//! A write that starts a value's age moves its entry to the tail (a value
//! written stale, to the head); with one TTL for the whole cache, values go
//! stale in this order, so the stale ones are at the head and the refresher
//! finds them in O(due) without a walk. Indices only: it knows the slab's
//! positions, not the nodes, so the shard (which owns both) decides what is
//! stale and this list only keeps the order.

use super::queue::{Link, NIL, Queue};

/// The write order of the entries the refresher does not hold.
pub(crate) struct Due {
    /// Each slab slot's place in the order; unlinked while held.
    order: Vec<Link>,
    queue: Queue,
}

impl Due {
    pub(crate) const fn new() -> Self {
        Self {
            order: Vec::new(),
            queue: Queue::new(),
        }
    }

    /// A new slab slot at the end, in no order yet (held until enqueued).
    pub(crate) fn push_slot(&mut self) {
        self.order.push(Link::UNLINKED);
    }

    pub(crate) fn reserve_exact(&mut self, more: usize) {
        self.order.reserve_exact(more);
    }

    /// Forgets every slot (the shard emptied).
    pub(crate) fn clear(&mut self) {
        *self = Self::new();
    }

    /// The oldest entry not held.
    #[inline]
    pub(crate) fn head(&self) -> Option<u32> {
        self.queue.head()
    }

    /// Whether the refresher holds slot `i`: it is out of the order.
    #[inline]
    pub(crate) fn is_held(&self, i: u32) -> bool {
        self.order[i as usize].next == NIL
    }

    /// Slot `i`'s value was just written: to the tail (the head if written
    /// stale), out of the refresher's hands if it was held.
    pub(crate) fn written(&mut self, i: u32, stale: bool) {
        if !self.is_held(i) {
            self.queue.unlink(&mut self.order, i, 0);
        }
        if stale {
            self.queue.push_front(&mut self.order, i, 0);
        } else {
            self.queue.push_back(&mut self.order, i, 0);
        }
    }

    /// The refresher takes slot `i` (which it does not hold yet).
    pub(crate) fn hold(&mut self, i: u32) {
        self.queue.unlink(&mut self.order, i, 0);
    }

    /// Slot `i` back to the head if the refresher holds it (it is due);
    /// whether it was held.
    pub(crate) fn give_back(&mut self, i: u32) -> bool {
        let held = self.is_held(i);
        if held {
            self.queue.push_front(&mut self.order, i, 0);
        }
        held
    }

    /// Slot `i` leaves the shard: out of the order if it was in it.
    pub(crate) fn leave(&mut self, i: u32) {
        if !self.is_held(i) {
            self.queue.unlink(&mut self.order, i, 0);
        }
    }

    /// Follows the slab's `swap_remove` of (empty, left) slot `i`: the last
    /// slot's place moves to `i`.
    pub(crate) fn swap_remove(&mut self, i: u32) {
        let last = (self.order.len() - 1) as u32;
        self.order.swap_remove(i as usize);
        if i != last && !self.is_held(i) {
            self.queue.relocate(&mut self.order, last, i);
        }
    }

    /// Checks the order over `n` slots; which slots it holds (the others
    /// are held by the refresher).
    pub(crate) fn validate(&self, n: usize) -> Result<Vec<bool>, String> {
        if self.order.len() != n {
            return Err(format!("{} order links for {n} nodes", self.order.len()));
        }
        let mut in_due = vec![false; n];
        let mut count = 0;
        for i in self.queue.walk(&self.order).take(n + 1) {
            if i as usize >= n {
                return Err(format!("due links to {i}, past the slab"));
            }
            if std::mem::replace(&mut in_due[i as usize], true) {
                return Err(format!("node {i} is in due twice"));
            }
            let next = self.order[i as usize].next;
            if self.order.get(next as usize).map(|l| l.prev) != Some(i) {
                return Err(format!("node {i}'s next in due does not link back"));
            }
            count += 1;
        }
        if count != self.queue.len() {
            return Err(format!("due counts {}, links {count}", self.queue.len()));
        }
        for (i, &linked) in in_due.iter().enumerate() {
            if linked == self.is_held(i as u32) {
                return Err(format!("node {i}'s order link disagrees with due"));
            }
        }
        Ok(in_due)
    }
}
