//! The fetch path: where values come from ([`Fetcher`]) and how a fetch of
//! a key runs once however many ask for it, async ([`Flight`]) or blocking
//! (`Cache::get_or_insert_with`).
//!
//! `fetcher` and `latch` know nothing of the cache; `flight` and
//! `blocking` build on [`Inner`](crate::inner::Inner).

mod blocking;
mod fetcher;
mod flight;
mod latch;

pub(crate) use fetcher::{ErasedFetcher, panic_as_error};
pub use fetcher::{FetchError, Fetched, Fetcher};
pub(crate) use flight::{Flight, Purpose};
pub(crate) use latch::Latch;
