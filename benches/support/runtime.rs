//! What the refresh benches share: the tokio runtime their background work
//! runs on.

/// A runtime of one worker thread, with time and I/O: the refresher (and
/// whatever else runs in the background) gets one core, the bench's reader
/// or writer thread the other.
pub fn one_worker() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}
