//! Arbitrary operation sequences on a small cache, weighted or not, of one
//! shard or several, checked
//! against the reference model the proptest suite uses
//! (`tests/support/model.rs`): after every operation the cache holds exactly
//! what the model holds, and the store's invariants (`validate`) hold.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/support/model.rs"]
mod model;

#[derive(arbitrary::Arbitrary, Debug)]
enum FuzzOp {
    Insert(u8, u16),
    InsertWithTtl(u8, u16, u8),
    Advance(u8),
    Get(u8),
    Invalidate(u8),
    MarkStale(u8),
    Clear,
    Resize(u8),
}

const KEYS: u8 = 16;

fuzz_target!(|input: (u8, bool, bool, Vec<FuzzOp>)| {
    let (initial_size, weighted, sharded, ops) = input;
    let ops: Vec<model::Op> = ops
        .into_iter()
        .map(|op| match op {
            FuzzOp::Insert(k, v) => model::Op::Insert(k % KEYS, v),
            FuzzOp::InsertWithTtl(k, v, ttl) => model::Op::InsertWithTtl(k % KEYS, v, ttl),
            FuzzOp::Advance(secs) => model::Op::Advance(secs),
            FuzzOp::Get(k) => model::Op::Get(k % KEYS),
            FuzzOp::Invalidate(k) => model::Op::Invalidate(k % KEYS),
            FuzzOp::MarkStale(k) => model::Op::MarkStale(k % KEYS),
            FuzzOp::Clear => model::Op::Clear,
            FuzzOp::Resize(size) => model::Op::Resize(usize::from(size % 13)),
        })
        .collect();
    let setup = model::Setup {
        initial_size: usize::from(initial_size % 13),
        weighted,
        sharded,
    };
    model::run(setup, KEYS, &ops);
});
