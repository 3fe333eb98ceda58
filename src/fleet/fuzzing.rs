//! Not for users: a replica's receiving side without Redis, so that the
//! fuzz target (`fuzz/fuzz_targets/fleet_message.rs`) can feed any bytes
//! through the inbox (its size check and bounds), the signature check, the
//! decoder and the applier.

use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::inbox::{Arrival, Inbox, Mailbox, inbox};
use super::pacer::Pacer;
use super::seal::Seal;
use super::shared::{Shared, ValueCodec};
use super::subscribe::Applier;
use super::{FleetMetrics, OnReconnect, RemoteChanges};
use crate::cache::Cache;

/// The channel a [`Receiver`] receives on, and [`sign`] signs for.
const CHANNEL: &str = "fuzz";

/// Applies payloads to a cache as a linked replica's subscriber does.
#[doc(hidden)]
pub struct Receiver<K, V, S> {
    applier: Applier<K, V, S>,
    mailbox: Mailbox,
    inbox: Inbox,
}

impl<K, V, S> Receiver<K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + DeserializeOwned + 'static,
    V: Clone + Send + Sync + Serialize + DeserializeOwned + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    /// A receiver for `cache`, with the fleet's `secret` if any, installing
    /// sent values if `values`, marking stale (else removing) if
    /// `mark_stale`, refusing payloads over `max_message` bytes, and
    /// holding `waiting` messages at most (a link holds 4,096; a few let a
    /// fuzzer reach the overflows).
    pub fn new(
        cache: &Cache<K, V, S>,
        secret: Option<&[u8]>,
        values: bool,
        mark_stale: bool,
        max_message: usize,
        waiting: usize,
    ) -> Self {
        let id = 0x5eed;
        let shared = Arc::new(Shared::new(
            id,
            secret.map(|secret| Seal::new(secret, CHANNEL)),
            Default::default(),
        ));
        let (mailbox, inbox) = inbox(Arc::clone(&shared), max_message, waiting);
        let applier = Applier {
            cache: Arc::downgrade(&cache.inner),
            shared,
            remote: if mark_stale {
                RemoteChanges::MarkStale
            } else {
                RemoteChanges::Remove
            },
            reconnect: OnReconnect::MarkAllStale,
            version: Some(Arc::new(|value: &V| {
                serde_json::to_string(value).unwrap_or_default()
            })),
            values: values.then_some(ValueCodec {
                encode: |value| serde_json::to_value(value),
                decode: serde_json::from_value,
            }),
            pacer: Pacer::default(),
        };
        Self {
            applier,
            mailbox,
            inbox,
        }
    }

    /// This receiver's replica id: messages from it are its own.
    pub fn id(&self) -> u64 {
        self.applier.shared.id
    }

    /// Receives `payloads` as one burst off the connection, then applies
    /// what the inbox yields.
    pub fn receive(&mut self, payloads: &[Vec<u8>]) {
        for payload in payloads {
            self.mailbox.deliver(redis::PushInfo {
                kind: redis::PushKind::Message,
                data: vec![
                    redis::Value::BulkString(CHANNEL.into()),
                    redis::Value::BulkString(payload.clone()),
                ],
            });
        }
        while let Some(arrival) = self.inbox.try_recv() {
            match arrival {
                Arrival::Message(payload) => self.applier.apply(&payload),
                Arrival::Gap => self.applier.overflowed(),
                Arrival::Disconnected => true,
            };
        }
    }

    /// What the receiver has counted.
    pub fn metrics(&self) -> FleetMetrics {
        self.applier.shared.metrics()
    }
}

/// `message` signed with `secret`, as a linked replica on the
/// [`Receiver`]'s channel sends it.
#[doc(hidden)]
pub fn sign(secret: &[u8], message: &[u8]) -> Vec<u8> {
    let mut payload = message.to_vec();
    Seal::new(secret, CHANNEL).sign(&mut payload);
    payload
}
