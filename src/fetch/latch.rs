//! A latch threads wait on until it opens, once: how a blocking
//! read-through's waiters learn that the thread loading the key is done.

use std::sync::{Condvar, Mutex, PoisonError};

#[derive(Default)]
pub(crate) struct Latch {
    open: Mutex<bool>,
    opened: Condvar,
}

impl Latch {
    /// Blocks until the latch is open.
    pub(crate) fn wait(&self) {
        // The flag is only ever set: a panic elsewhere cannot leave it
        // half-written, so poison is ignored.
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        while !*open {
            open = self
                .opened
                .wait(open)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Opens the latch and wakes every waiter.
    pub(crate) fn open(&self) {
        *self.open.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.opened.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn waiters_go_once_it_opens_and_later_ones_do_not_wait() {
        let latch = Arc::new(Latch::default());
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let latch = Arc::clone(&latch);
                std::thread::spawn(move || latch.wait())
            })
            .collect();
        latch.open();
        for waiter in waiters {
            waiter.join().unwrap();
        }
        latch.wait();
    }
}
