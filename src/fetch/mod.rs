//! The fetch path: where values come from ([`Fetcher`]) and how a fetch of
//! a key runs once however many ask for it, async ([`Flight`]) or blocking
//! (`Cache::get_or_insert_with`).
//!
//! `fetcher`, `latch` and `in_flight` (the maps of fetches under way and
//! their fences, which [`Inner`](crate::inner::Inner) holds) know nothing
//! of the cache; `install` builds on `Inner`, and `flight` and
//! `blocking` on `install`.

mod batch;
mod blocking;
mod fetcher;
mod flight;
mod in_flight;
mod install;
mod latch;

pub use batch::BatchFetcher;
pub(crate) use batch::{DynBatchFetcher, FnBatch, TraitBatch};
pub(crate) use fetcher::{ErasedFetcher, panic_as_error};
pub use fetcher::{FetchError, Fetched, Fetcher};
pub(crate) use flight::{Flight, Purpose};
pub(crate) use in_flight::InFlight;
