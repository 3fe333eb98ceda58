//! A refresher restarted while the old task is still at work (told to
//! stop, not yet stopped: `start_on` after `start_thread`, `shutdown` then
//! `start`, a TTL set to `None` and back) must not strand entries: the old
//! task, taking due entries after the new one gave back everything held,
//! would leave them held with nobody refreshing them, served stale for
//! good. Real threads under a watchdog.
//!
//! To stop the old task at the exact point, the key's `Clone` blocks on the
//! refresher's thread at the second clone of one key there: the first is
//! the old task taking the key as due (under the shard's lock), the second
//! its bookkeeping after that, with no lock held. The test restarts the refresher meanwhile, then lets
//! the old task go on.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, mpsc};
use std::time::Duration;

use swr_cache::Cache;

#[path = "support/watchdog.rs"]
mod watchdog;

static ARMED: AtomicBool = AtomicBool::new(false);
/// Clones of each key on the refresher's thread.
static CLONES: Mutex<[u8; 64]> = Mutex::new([0; 64]);
static BLOCKED: Mutex<Option<mpsc::Sender<()>>> = Mutex::new(None);
static GATE: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

fn on_refresher_thread() -> bool {
    std::thread::current().name() == Some("swr-cache-refresher")
}

#[derive(PartialEq, Eq, Debug)]
struct Key(u64);

impl Hash for Key {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.0.hash(h);
    }
}

impl Clone for Key {
    fn clone(&self) -> Self {
        let second = || {
            let mut clones = CLONES.lock().unwrap();
            let count = &mut clones[self.0 as usize];
            *count = count.saturating_add(1);
            *count == 2
        };
        if ARMED.load(Ordering::SeqCst) && on_refresher_thread() && second() {
            ARMED.store(false, Ordering::SeqCst);
            if let Some(blocked) = BLOCKED.lock().unwrap().take() {
                blocked.send(()).unwrap();
            }
            let mut open = GATE.0.lock().unwrap();
            while !*open {
                open = GATE.1.wait(open).unwrap();
            }
        }
        Key(self.0)
    }
}

#[test]
fn entries_taken_by_a_task_stopping_late_are_not_stranded() {
    watchdog::within("restart", || {
        const KEYS: u64 = 64;
        let (blocked, is_blocked) = mpsc::channel();
        *BLOCKED.lock().unwrap() = Some(blocked);
        // Driven only once the old task is let go.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let cache: Cache<Key, u64> = Cache::builder()
            .max_size(4096)
            .ttl(Duration::from_millis(300))
            .refresh_interval(Duration::from_millis(50))
            .refresh_on_read(false)
            .max_concurrent_refreshes(16)
            .fetcher(|key: Key| {
                let old_task = on_refresher_thread();
                async move {
                    if old_task {
                        // The old task's fetches never answer.
                        std::future::pending::<()>().await;
                    }
                    Ok::<_, std::io::Error>(key.0 + 1000)
                }
            })
            .build()
            .unwrap();
        assert!(cache.shard_count() > 1);
        for k in 0..KEYS {
            cache.insert(Key(k), k);
        }
        cache.start_thread().unwrap();
        ARMED.store(true, Ordering::SeqCst);
        is_blocked.recv().unwrap();

        cache.start_on(runtime.handle()).unwrap();
        *GATE.0.lock().unwrap() = true;
        GATE.1.notify_all();
        std::thread::sleep(Duration::from_millis(300));
        runtime.block_on(async { tokio::time::sleep(Duration::from_secs(3)).await });

        cache.validate();
        let stranded: Vec<u64> = (0..KEYS)
            .filter(|&k| cache.peek(&Key(k)) != Some(k + 1000))
            .collect();
        assert!(
            stranded.is_empty(),
            "{} of {KEYS} keys never refreshed in 10 TTLs: {stranded:?}",
            stranded.len()
        );
    });
}
