//! Arbitrary operation sequences on a small cache, checked against the
//! reference model the proptest suite uses (`tests/support/model.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/support/model.rs"]
mod model;

#[derive(arbitrary::Arbitrary, Debug)]
enum FuzzOp {
    Insert(u8, u16),
    Get(u8),
    Invalidate(u8),
    Clear,
    Resize(u8),
}

const KEYS: u8 = 16;

fuzz_target!(|input: (u8, Vec<FuzzOp>)| {
    let (initial_size, ops) = input;
    let ops: Vec<model::Op> = ops
        .into_iter()
        .map(|op| match op {
            FuzzOp::Insert(k, v) => model::Op::Insert(k % KEYS, v),
            FuzzOp::Get(k) => model::Op::Get(k % KEYS),
            FuzzOp::Invalidate(k) => model::Op::Invalidate(k % KEYS),
            FuzzOp::Clear => model::Op::Clear,
            FuzzOp::Resize(size) => model::Op::Resize(usize::from(size % 9)),
        })
        .collect();
    model::run(usize::from(initial_size % 9), KEYS, &ops);
});
