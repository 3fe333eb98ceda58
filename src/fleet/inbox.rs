//! What the subscription received and the subscriber has not applied yet:
//! bounded by count and by bytes, and in order around the messages it had
//! to drop.
//!
//! The connection hands each push to a [`Mailbox`] (redis-rs calls it
//! without blocking, on the connection's task); the subscriber takes from
//! the [`Inbox`]. A message larger than the link's limit is counted and
//! skipped unread; with a secret, so is one not signed with it (counted
//! rejected: junk must not take the fleet's room), and a signed one is
//! queued without its tag. One that does not fit (4,096 waiting, or their
//! bytes at the bound) is dropped, and the drop's place in the stream is
//! noted: the
//! inbox then yields [`Arrival::Gap`] there, after every message received
//! before the drop (which it discards unapplied: the reconnect action that
//! the gap runs covers them, and applying them after it would let older
//! writes land as fresh) and before every message received after it (the
//! action itself may be paced to run later, after newer messages: safe, as
//! it only marks stale or clears).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::mpsc;

use super::shared::Shared;

/// Messages waiting to be applied, at most.
pub(super) const RECEIVED: usize = 4096;
/// Their bytes, at most (or four of the largest messages allowed, if more).
pub(super) const RECEIVED_BYTES: usize = 16 << 20;

/// What the inbox yields, in the order received.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Arrival {
    /// A message's payload.
    Message(Vec<u8>),
    /// Messages were dropped here: yielded after the backlog received
    /// before them was discarded, before anything received after them. The
    /// reconnect action is due (the [pacer](super::pacer) may hold it past
    /// newer messages, which is safe).
    Gap,
    /// The connection ended.
    Disconnected,
}

/// The inbox's two ends: the connection's push sender, and the subscriber's.
/// `waiting` is how many messages it holds: [`RECEIVED`] but in the fuzz
/// target, which takes fewer to reach its overflows.
pub(super) fn inbox(shared: Arc<Shared>, max_message: usize, waiting: usize) -> (Mailbox, Inbox) {
    let (sender, receiver) = mpsc::channel(waiting);
    let state = Arc::new(State {
        bytes: AtomicUsize::new(0),
        max_bytes: RECEIVED_BYTES.max(max_message.saturating_mul(4)),
        enqueued: AtomicU64::new(0),
        gap_after: AtomicU64::new(0),
        drops: AtomicU64::new(0),
    });
    let mailbox = Mailbox {
        sender,
        state: Arc::clone(&state),
        max_message,
        shared: Arc::clone(&shared),
    };
    let inbox = Inbox {
        receiver,
        state,
        shared,
        taken: 0,
        drops_acted: 0,
        gap_acted: None,
        held: None,
    };
    (mailbox, inbox)
}

struct State {
    /// Bytes of the payloads waiting.
    bytes: AtomicUsize,
    max_bytes: usize,
    /// Pushes queued so far (written by the mailbox alone).
    enqueued: AtomicU64,
    /// The latest drop's place: the number of pushes queued before it.
    gap_after: AtomicU64,
    /// Drops so far; stored after `gap_after`.
    drops: AtomicU64,
}

/// The connection's end: queues pushes without waiting.
pub(super) struct Mailbox {
    sender: mpsc::Sender<(Arrival, usize)>,
    state: Arc<State>,
    max_message: usize,
    shared: Arc<Shared>,
}

impl Mailbox {
    /// Queues `push`, skips it if it is too large, or drops it and notes
    /// the gap if the inbox is full.
    pub(super) fn deliver(&self, push: redis::PushInfo) {
        let arrival = match push.kind {
            redis::PushKind::Message => {
                let payload = match push.data.into_iter().nth(1) {
                    Some(redis::Value::BulkString(payload)) => payload,
                    _ => Vec::new(),
                };
                if payload.len() > self.max_message {
                    let counters = &self.shared.counters;
                    counters.incr(&counters.oversized);
                    self.shared.warn(
                        "a message over the size limit was skipped unread",
                        &format_args!("{} bytes", payload.len()),
                    );
                    return;
                }
                match self.opened(payload) {
                    Some(message) => Arrival::Message(message),
                    None => return,
                }
            }
            redis::PushKind::Disconnection => Arrival::Disconnected,
            // Subscription confirmations and the like.
            _ => return,
        };
        let size = match &arrival {
            Arrival::Message(payload) => payload.len(),
            _ => 0,
        };
        let state = &self.state;
        let fits = state.bytes.load(Ordering::Acquire) + size <= state.max_bytes
            || matches!(arrival, Arrival::Disconnected);
        if fits {
            state.bytes.fetch_add(size, Ordering::AcqRel);
            if self.sender.try_send((arrival, size)).is_ok() {
                state.enqueued.fetch_add(1, Ordering::Release);
                return;
            }
            state.bytes.fetch_sub(size, Ordering::AcqRel);
        }
        let counters = &self.shared.counters;
        counters.incr(&counters.arrival_dropped);
        // Everything queued so far came before this drop.
        let before = state.enqueued.load(Ordering::Relaxed);
        state.gap_after.store(before, Ordering::Relaxed);
        state.drops.fetch_add(1, Ordering::Release);
    }
}

impl Mailbox {
    /// The message of `payload`, its tag cut off, if the fleet signs and
    /// the tag is its key's (or `payload` as it is, if it does not sign).
    /// Checked before the message takes room in the inbox: unsigned junk
    /// must not crowd out the fleet's messages and cause a gap.
    fn opened(&self, mut payload: Vec<u8>) -> Option<Vec<u8>> {
        let Some(seal) = &self.shared.seal else {
            return Some(payload);
        };
        match seal.open(&payload) {
            Ok(message) => {
                let len = message.len();
                payload.truncate(len);
                Some(payload)
            }
            Err(why) => {
                let counters = &self.shared.counters;
                counters.incr(&counters.rejected);
                self.shared
                    .warn("a message was refused", &format_args!("{why:?}"));
                None
            }
        }
    }
}

impl redis::aio::AsyncPushSender for Mailbox {
    fn send(&self, push: redis::PushInfo) -> Result<(), redis::aio::SendError> {
        self.deliver(push);
        Ok(())
    }
}

/// The subscriber's end.
pub(super) struct Inbox {
    receiver: mpsc::Receiver<(Arrival, usize)>,
    state: Arc<State>,
    shared: Arc<Shared>,
    /// Pushes taken so far.
    taken: u64,
    /// Drops up to the last gap yielded.
    drops_acted: u64,
    /// The place of the last gap yielded: a drop seen there again is the
    /// same gap (its place may be read before its count).
    gap_acted: Option<u64>,
    /// A push received after a gap, yielded after it.
    held: Option<Arrival>,
}

impl Inbox {
    /// The next arrival; `None` once the connection is gone and all is
    /// taken.
    pub(super) async fn recv(&mut self) -> Option<Arrival> {
        if let Some(ready) = self.ready() {
            return Some(ready);
        }
        let received = self.receiver.recv().await;
        self.arrived(received)
    }

    /// The next arrival if there is one now (for the fuzz target, which
    /// runs no runtime).
    pub(super) fn try_recv(&mut self) -> Option<Arrival> {
        if let Some(ready) = self.ready() {
            return Some(ready);
        }
        let received = self.receiver.try_recv().ok();
        self.arrived(received)
    }

    /// What is due before anything more is taken: a push held back behind
    /// a gap, or a gap whose backlog is all taken.
    fn ready(&mut self) -> Option<Arrival> {
        if let Some(held) = self.held.take() {
            return Some(held);
        }
        self.gap_reached().then_some(Arrival::Gap)
    }

    /// What to yield for a push just received (`None`: the connection is
    /// gone): the push, or first the gap of a drop noted meanwhile.
    fn arrived(&mut self, received: Option<(Arrival, usize)>) -> Option<Arrival> {
        let arrival = self.take(received)?;
        match self.pending_gap() {
            None => Some(arrival),
            // Received before the drop: the gap's action covers it.
            Some(gap) if self.taken <= gap => {
                let mut discarded = Some(arrival);
                while let Some(older) = discarded {
                    if matches!(older, Arrival::Message(_)) {
                        let counters = &self.shared.counters;
                        counters.incr(&counters.discarded);
                    }
                    // Queued before the drop was noted, so it is there.
                    discarded = if self.taken < gap {
                        let older = self.receiver.try_recv().ok();
                        self.take(older)
                    } else {
                        None
                    };
                }
                Some(Arrival::Gap)
            }
            // Received after the drop: the gap comes first.
            Some(_) => {
                self.held = Some(arrival);
                Some(Arrival::Gap)
            }
        }
    }

    /// Counts a taken push and frees its bytes.
    fn take(&mut self, taken: Option<(Arrival, usize)>) -> Option<Arrival> {
        let (arrival, size) = taken?;
        self.taken += 1;
        self.state.bytes.fetch_sub(size, Ordering::AcqRel);
        Some(arrival)
    }

    /// The place of the latest drop, if any drop is not yet yielded as a
    /// gap; the caller yields it (drops that come together make one gap).
    fn pending_gap(&mut self) -> Option<u64> {
        let drops = self.state.drops.load(Ordering::Acquire);
        if drops == self.drops_acted {
            return None;
        }
        self.drops_acted = drops;
        let gap = self.state.gap_after.load(Ordering::Relaxed);
        self.new_gap(gap).then_some(gap)
    }

    /// Whether a gap at `gap` is not the one last yielded: the place read
    /// with one count may be the next drop's, already noted, and that drop
    /// must not make a second gap when its count is read.
    fn new_gap(&mut self, gap: u64) -> bool {
        if self.gap_acted == Some(gap) {
            return false;
        }
        self.gap_acted = Some(gap);
        true
    }

    /// Whether a drop is noted and everything before it was taken: with
    /// nothing more arriving, the gap is yielded at once.
    fn gap_reached(&mut self) -> bool {
        let drops = self.state.drops.load(Ordering::Acquire);
        let gap = self.state.gap_after.load(Ordering::Relaxed);
        if drops == self.drops_acted || gap > self.taken {
            return false;
        }
        self.drops_acted = drops;
        self.new_gap(gap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(payload: &[u8]) -> redis::PushInfo {
        redis::PushInfo {
            kind: redis::PushKind::Message,
            data: vec![
                redis::Value::BulkString(b"channel".to_vec()),
                redis::Value::BulkString(payload.to_vec()),
            ],
        }
    }

    fn shared() -> Arc<Shared> {
        Arc::new(Shared::new(1, None, Default::default()))
    }

    #[test]
    fn nothing_received_before_an_overflow_comes_after_its_gap() {
        let (mailbox, mut inbox) = inbox(shared(), 1024, RECEIVED);
        for _ in 0..RECEIVED {
            mailbox.deliver(message(b"old"));
        }
        assert_eq!(inbox.try_recv(), Some(Arrival::Message(b"old".to_vec())));
        mailbox.deliver(message(b"old, the last to fit"));
        mailbox.deliver(message(b"dropped"));
        mailbox.deliver(message(b"dropped"));
        assert_eq!(mailbox.shared.metrics().dropped_on_arrival, 2);
        assert_eq!(
            inbox.try_recv(),
            Some(Arrival::Gap),
            "the older backlog discarded"
        );
        mailbox.deliver(message(b"new"));
        assert_eq!(inbox.try_recv(), Some(Arrival::Message(b"new".to_vec())));
        assert_eq!(
            inbox.try_recv(),
            None,
            "one gap, and nothing older after it"
        );
    }

    /// The backlog thrown away behind a gap was counted nowhere, so what
    /// arrived did not add up.
    #[test]
    fn messages_discarded_behind_a_gap_are_counted() {
        let (mailbox, mut inbox) = inbox(shared(), 1024, 8);
        for _ in 0..10 {
            mailbox.deliver(message(b"m"));
        }
        assert_eq!(inbox.try_recv(), Some(Arrival::Gap));
        mailbox.deliver(message(b"new"));
        assert_eq!(inbox.try_recv(), Some(Arrival::Message(b"new".to_vec())));
        let m = mailbox.shared.metrics();
        assert_eq!((m.discarded, m.dropped_on_arrival), (8, 2), "{m:?}");
    }

    /// The inbox read a drop's count, then its place, which could already
    /// be the next drop's: that drop made a second gap once its count was
    /// read.
    #[test]
    fn a_drop_whose_place_was_read_early_makes_one_gap() {
        let (mailbox, mut inbox) = inbox(shared(), 1024, 2);
        let state = Arc::clone(&mailbox.state);
        mailbox.deliver(message(b"a"));
        mailbox.deliver(message(b"b"));
        mailbox.deliver(message(b"dropped"));
        // Taken before the inbox looked at the drops: room for one more.
        let first = inbox.receiver.try_recv().ok();
        assert!(inbox.take(first).is_some());
        mailbox.deliver(message(b"x"));
        // The next drop, halfway: its place noted, its count not yet.
        state.gap_after.store(3, Ordering::Relaxed);
        assert_eq!(inbox.try_recv(), Some(Arrival::Gap));
        state.drops.fetch_add(1, Ordering::Release);
        mailbox.deliver(message(b"new"));
        assert_eq!(
            inbox.try_recv(),
            Some(Arrival::Message(b"new".to_vec())),
            "one gap"
        );
    }

    #[test]
    fn a_gap_with_nothing_after_it_comes_once_the_backlog_is_taken() {
        let (mailbox, mut inbox) = inbox(shared(), 1024, RECEIVED);
        for _ in 0..RECEIVED {
            mailbox.deliver(message(b"m"));
        }
        mailbox.deliver(message(b"dropped"));
        assert_eq!(inbox.try_recv(), Some(Arrival::Gap));
        assert_eq!(inbox.try_recv(), None);
    }

    #[test]
    fn the_bytes_waiting_are_bounded_not_only_their_number() {
        let max_message = 5 << 20;
        let (mailbox, mut inbox) = inbox(shared(), max_message, RECEIVED);
        let big = vec![b'x'; max_message];
        for _ in 0..4 {
            mailbox.deliver(message(&big));
        }
        mailbox.deliver(message(&big));
        assert_eq!(
            mailbox.shared.metrics().dropped_on_arrival,
            1,
            "20 MiB held at most"
        );
        assert_eq!(inbox.try_recv(), Some(Arrival::Gap));
        mailbox.deliver(message(&big));
        assert!(matches!(inbox.try_recv(), Some(Arrival::Message(m)) if m.len() == max_message));
    }

    /// Unsigned junk was queued and checked only when applied: a burst of
    /// it filled the inbox, dropped the fleet's messages and ran the
    /// reconnect action.
    #[test]
    fn unsigned_junk_under_a_secret_takes_no_room_in_the_inbox() {
        let seal = super::super::seal::Seal::new(b"fleet key", "channel");
        let shared = Arc::new(Shared::new(1, Some(seal.clone()), Default::default()));
        let (mailbox, mut inbox) = inbox(shared, 1024, RECEIVED);
        for _ in 0..RECEIVED + 100 {
            mailbox.deliver(message(b"junk"));
        }
        let mut signed = b"{}".to_vec();
        seal.sign(&mut signed);
        mailbox.deliver(message(&signed));
        let m = mailbox.shared.metrics();
        assert_eq!(
            (m.rejected, m.dropped_on_arrival),
            (RECEIVED as u64 + 100, 0),
            "{m:?}"
        );
        assert_eq!(
            inbox.try_recv(),
            Some(Arrival::Message(b"{}".to_vec())),
            "the signed one, without its tag"
        );
        assert_eq!(inbox.try_recv(), None);
    }

    #[test]
    fn a_message_over_the_limit_is_counted_and_skipped() {
        let (mailbox, mut inbox) = inbox(shared(), 1024, RECEIVED);
        mailbox.deliver(message(&[b'x'; 1025]));
        mailbox.deliver(message(&[b'x'; 1024]));
        let m = mailbox.shared.metrics();
        assert_eq!((m.oversized, m.dropped_on_arrival), (1, 0));
        assert!(matches!(inbox.try_recv(), Some(Arrival::Message(m)) if m.len() == 1024));
        assert_eq!(inbox.try_recv(), None);
    }
}
