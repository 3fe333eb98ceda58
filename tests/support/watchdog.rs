//! A watchdog for real-time tests: a stuck cache becomes a test failure,
//! not a hung suite.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::time::Duration;

/// How long a workload may take before it is declared stuck. The slowest
/// one finishes in a few seconds in a debug build.
pub const WATCHDOG: Duration = Duration::from_secs(60);

/// Runs `work` on a thread of its own and fails if it does not finish within
/// [`WATCHDOG`] (a deadlock or a livelock); a panic in `work` is passed on.
pub fn within<T: Send + 'static>(what: &str, work: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(std::panic::catch_unwind(AssertUnwindSafe(work)));
    });
    match finished.recv_timeout(WATCHDOG) {
        Ok(Ok(result)) => result,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("{what}: not finished after {WATCHDOG:?}: deadlock or livelock"),
    }
}
