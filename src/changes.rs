//! What the cache tells a fleet link of the changes made through it, so
//! that the link can tell the other replicas (see `fleet`, feature
//! `redis`).
//!
//! One hook per cache, set while a link is attached. The cache calls it
//! with no lock held, after the change; a flag read first
//! keeps the cost to one relaxed load when no link is attached. Changes
//! applied *from* the fleet are not told ([`Share::Local`]), so replicas
//! do not echo one another.

use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwapOption;

/// A change made through this cache's API or by its refresher.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) enum Change<'a, K, V> {
    /// The user wrote the key (`insert`); told after the write.
    Written(&'a K),
    /// A refresh replaced the first value with the second, which was not
    /// marked stale; told after the install.
    Refreshed(&'a K, &'a V, &'a V),
    /// The user removed the key (`invalidate`, `remove`, `retain`,
    /// `invalidate_if`); told after the removal.
    Removed(&'a K),
    /// The user is clearing the cache; told before the clear, so that a
    /// write racing it can be told again after it.
    Clearing,
    /// The user cleared the cache; told after the clear.
    Cleared,
}

/// Whether a removal is told to the fleet link.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Share {
    /// The user's own change: told.
    Fleet,
    /// Applied from the fleet, or meant for this replica alone: not told.
    Local,
}

type Hook<K, V> = Box<dyn Fn(Change<'_, K, V>) + Send + Sync>;

/// The hook, if a link is attached.
pub(crate) struct Changes<K, V> {
    /// Whether `hook` is set; read first, so an unlinked cache pays one
    /// relaxed load per change.
    on: AtomicBool,
    hook: ArcSwapOption<Hook<K, V>>,
}

impl<K, V> Changes<K, V> {
    pub(crate) fn new() -> Self {
        Self {
            on: AtomicBool::new(false),
            hook: ArcSwapOption::empty(),
        }
    }

    /// Whether a link is attached (so a caller may prepare what it tells).
    #[inline]
    pub(crate) fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Tells the hook of the change `change` makes, if a link is attached.
    #[inline]
    pub(crate) fn tell<'a>(&self, change: impl FnOnce() -> Change<'a, K, V>)
    where
        K: 'a,
        V: 'a,
    {
        if self.on.load(Ordering::Relaxed) {
            if let Some(hook) = &*self.hook.load() {
                hook(change());
            }
        }
    }

    /// Sets the hook; false if one is set already.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn attach(&self, hook: Hook<K, V>) -> bool {
        let previous = self.hook.compare_and_swap(
            &None::<std::sync::Arc<Hook<K, V>>>,
            Some(std::sync::Arc::new(hook)),
        );
        if previous.is_some() {
            return false;
        }
        self.on.store(true, Ordering::Relaxed);
        true
    }

    /// Removes the hook.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn detach(&self) {
        self.on.store(false, Ordering::Relaxed);
        self.hook.store(None);
    }
}
