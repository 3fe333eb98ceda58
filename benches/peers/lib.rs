//! Nothing here: this crate holds benches only (`benches/`), so that the
//! peers they compare swr-cache with are not dependencies of swr-cache.
