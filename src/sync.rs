//! The synchronization types the store is built on: std's, or shuttle's
//! under `--cfg swr_shuttle`, so the permutation tests (`tests/shuttle.rs`)
//! drive every lock and atomic of the store through shuttle's scheduler.
//! Only the types change; no code path differs between the two.

#[cfg(not(swr_shuttle))]
pub(crate) use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize};
#[cfg(not(swr_shuttle))]
pub(crate) use std::sync::{Mutex, MutexGuard};

#[cfg(swr_shuttle)]
pub(crate) use shuttle::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize};
#[cfg(swr_shuttle)]
pub(crate) use shuttle::sync::{Mutex, MutexGuard};
