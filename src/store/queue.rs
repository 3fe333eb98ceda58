//! A FIFO queue of entries, a circular doubly linked list through the
//! shard's [`Link`]s, which sit beside the slab of nodes, index for index.
//!
//! Circular, so the tail is the head's `prev` and moving the head to the
//! tail (a CLOCK hand passing a referenced entry) is one assignment.
//! Doubly linked, so an entry invalidated from the middle leaves in O(1).
//! Apart from the nodes, so a read (which never follows links) loads only
//! the node, and queue work (which never reads keys or values) only links.

/// No entry: the end of a queue, or an empty queue.
pub(crate) const NIL: u32 = u32::MAX;

/// Where an entry is in its queue: the indices before and after it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Link {
    pub(crate) prev: u32,
    pub(crate) next: u32,
}

impl Link {
    /// The link of an entry in no queue.
    pub(crate) const UNLINKED: Self = Self {
        prev: NIL,
        next: NIL,
    };
}

/// One queue's ends and totals. The nodes it links are the shard's.
#[derive(Debug)]
pub(crate) struct Queue {
    head: u32,
    len: usize,
    /// The sum of the weights of the queued entries.
    weight: u64,
}

impl Queue {
    pub(crate) const fn new() -> Self {
        Self {
            head: NIL,
            len: 0,
            weight: 0,
        }
    }

    #[inline]
    pub(crate) fn head(&self) -> Option<u32> {
        (self.head != NIL).then_some(self.head)
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub(crate) fn weight(&self) -> u64 {
        self.weight
    }

    /// Links entry `i` at the tail.
    #[inline]
    pub(crate) fn push_back(&mut self, links: &mut [Link], i: u32, weight: u64) {
        if self.head == NIL {
            self.head = i;
            links[i as usize] = Link { prev: i, next: i };
        } else {
            let head = self.head;
            let tail = links[head as usize].prev;
            links[i as usize].prev = tail;
            links[i as usize].next = head;
            links[tail as usize].next = i;
            links[head as usize].prev = i;
        }
        self.len += 1;
        self.weight += weight;
    }

    /// Unlinks entry `i`, which this queue holds.
    #[inline]
    pub(crate) fn unlink(&mut self, links: &mut [Link], i: u32, weight: u64) {
        let Link { prev, next } = links[i as usize];
        if next == i {
            self.head = NIL;
        } else {
            links[prev as usize].next = next;
            links[next as usize].prev = prev;
            if self.head == i {
                self.head = next;
            }
        }
        links[i as usize] = Link::UNLINKED;
        self.len -= 1;
        self.weight -= weight;
    }

    /// Moves the head to the tail: the next entry becomes the head.
    #[inline]
    pub(crate) fn rotate(&mut self, links: &[Link]) {
        if self.head != NIL {
            self.head = links[self.head as usize].next;
        }
    }

    /// Follows an entry of this queue moved in the slab from `from` to `to`
    /// (its link already moved with it).
    pub(crate) fn relocate(&mut self, links: &mut [Link], from: u32, to: u32) {
        let Link { prev, next } = links[to as usize];
        if next == from {
            // Alone in the queue: it linked to itself.
            links[to as usize] = Link { prev: to, next: to };
        } else {
            links[prev as usize].next = to;
            links[next as usize].prev = to;
        }
        if self.head == from {
            self.head = to;
        }
    }

    /// Changes the weight of a queued entry.
    pub(crate) fn reweigh(&mut self, old: u64, new: u64) {
        self.weight = self.weight - old + new;
    }

    pub(crate) fn clear(&mut self) {
        *self = Self::new();
    }

    /// The queue's entries from the head, for `validate`.
    pub(crate) fn walk<'a>(&self, links: &'a [Link]) -> impl Iterator<Item = u32> + 'a {
        let head = self.head;
        let mut at = head;
        let mut started = false;
        std::iter::from_fn(move || {
            if at == NIL || (started && at == head) {
                return None;
            }
            started = true;
            let here = at;
            at = links.get(here as usize).map_or(NIL, |l| l.next);
            Some(here)
        })
    }
}
