//! The fleet link's receiving side, without Redis: any bytes, or messages
//! built to pass the envelope, signed or not, fed in bursts through the
//! inbox (size limit, bounds), the signature check, the decoder and the
//! applier of a small cache. Never a panic; every message counted exactly
//! once; with a secret, what is not signed with it changes nothing and is
//! counted rejected; the store's invariants hold after every burst.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use swr_cache::Cache;
use swr_cache::fleet::fuzzing::{Receiver, sign};

const SECRET: &[u8] = b"fuzz secret";
const MAX_MESSAGE: usize = 1024;
/// Messages the receiver holds: few, so that bursts overflow it.
const WAITING: usize = 8;

#[derive(Arbitrary, Debug)]
enum Payload {
    /// Bytes as they come.
    Raw(Vec<u8>),
    /// A message with a valid envelope, its fields chosen by the fuzzer.
    Built {
        own: bool,
        op: u8,
        lost: bool,
        key: Option<u8>,
        version: Option<u8>,
        value: Option<u16>,
        extra: bool,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    secret: bool,
    sign_them: bool,
    values: bool,
    mark_stale: bool,
    bursts: Vec<Vec<Payload>>,
}

fn bytes(payload: &Payload, own_id: u64) -> Vec<u8> {
    match payload {
        Payload::Raw(bytes) => bytes.clone(),
        Payload::Built {
            own,
            op,
            lost,
            key,
            version,
            value,
            extra,
        } => {
            let from = if *own { own_id } else { 1 };
            let op = ["w", "r", "d", "c", "x"][usize::from(*op % 5)];
            let mut message = serde_json::json!({
                "swr": 1,
                "from": format!("{from:016x}"),
                "op": op,
            });
            let object = message.as_object_mut().unwrap();
            if *lost {
                object.insert("lost".into(), true.into());
            }
            if let Some(key) = key {
                object.insert("key".into(), format!("k{}", key % 16).into());
            }
            if let Some(version) = version {
                object.insert("ver".into(), format!("\"v{version}\"").into());
            }
            if let Some(value) = value {
                object.insert("val".into(), format!("v{value}").into());
            }
            if *extra {
                object.insert("later".into(), serde_json::json!([1, {"a": null}]));
            }
            serde_json::to_vec(&message).unwrap()
        }
    }
}

fn entries(cache: &Cache<String, String>) -> Vec<(String, String)> {
    let mut entries: Vec<_> = cache.iter().collect();
    entries.sort();
    entries
}

fuzz_target!(|input: Input| {
    let cache: Cache<String, String> = Cache::builder().max_size(8).build().unwrap();
    for k in 0..4 {
        cache.insert(format!("k{k}"), "v0".into());
    }
    let secret = input.secret.then_some(SECRET);
    let mut receiver = Receiver::new(
        &cache,
        secret,
        input.values,
        input.mark_stale,
        MAX_MESSAGE,
        WAITING,
    );
    let mut sent = 0u64;
    for burst in &input.bursts {
        let payloads: Vec<Vec<u8>> = burst
            .iter()
            .map(|payload| {
                let message = bytes(payload, receiver.id());
                if input.sign_them {
                    sign(SECRET, &message)
                } else {
                    message
                }
            })
            .collect();
        let before = entries(&cache);
        let metrics_before = receiver.metrics();
        receiver.receive(&payloads);
        sent += payloads.len() as u64;
        let m = receiver.metrics();
        if secret.is_some() && !input.sign_them {
            assert_eq!(
                entries(&cache),
                before,
                "an unsigned burst changed the cache"
            );
            let rejected = m.rejected - metrics_before.rejected;
            let big = m.oversized - metrics_before.oversized;
            assert_eq!(rejected + big, payloads.len() as u64, "{m:?}");
            assert_eq!(m.dropped_on_arrival, metrics_before.dropped_on_arrival);
        }
        cache.validate();
        assert!(cache.len() <= 8);
    }
    let m = receiver.metrics();
    let outcomes = m.applied + m.already_current + m.own + m.malformed;
    assert_eq!(
        m.received, outcomes,
        "every message received has one outcome: {m:?}"
    );
    assert_eq!(
        m.received + m.oversized + m.rejected + m.dropped_on_arrival + m.discarded,
        sent,
        "{m:?}"
    );
});
