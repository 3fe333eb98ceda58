//! Model-based tests: random operation sequences against the reference
//! model in `support/model.rs`.

use std::collections::HashMap;

use proptest::prelude::*;

#[path = "support/model.rs"]
mod model;

use model::{Op, Setup, run};

fn op(keys: u8) -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..keys, any::<u16>()).prop_map(|(k, v)| Op::Insert(k, v)),
        2 => (0..keys, any::<u16>(), any::<u8>()).prop_map(|(k, v, t)| Op::InsertWithTtl(k, v, t)),
        2 => any::<u8>().prop_map(Op::Advance),
        6 => (0..keys).prop_map(Op::Get),
        2 => (0..keys).prop_map(Op::Invalidate),
        1 => (0..keys).prop_map(Op::MarkStale),
        1 => Just(Op::Clear),
        1 => (0..=8usize).prop_map(Op::Resize),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_operations_agree_with_the_model(
        initial_size in 0..=8usize,
        ops in prop::collection::vec(op(16), 1..200),
    ) {
        let setup = Setup { initial_size, weighted: false, sharded: false };
        run(setup, 16, &ops);
    }

    /// The same with weights: the bound is on their sum.
    #[test]
    fn random_weighted_operations_agree_with_the_model(
        initial_size in 0..=12usize,
        ops in prop::collection::vec(op(16), 1..200),
    ) {
        let setup = Setup { initial_size, weighted: true, sharded: false };
        run(setup, 16, &ops);
    }

    /// Several shards sharing a tiny bound, weighted or not.
    #[test]
    fn random_operations_on_several_shards_agree_with_the_model(
        initial_size in 0..=12usize,
        weighted in any::<bool>(),
        ops in prop::collection::vec(op(16), 1..200),
    ) {
        let setup = Setup { initial_size, weighted, sharded: true };
        run(setup, 16, &ops);
    }

    /// With room for every key and no resize, nothing is evicted: the cache
    /// is exactly the model.
    #[test]
    fn without_overflow_the_cache_is_the_model(
        ops in prop::collection::vec(op(8), 1..200)
            .prop_map(|ops| ops.into_iter().filter(|op| !matches!(op, Op::Resize(_))).collect::<Vec<_>>()),
    ) {
        let mut written: HashMap<u8, u16> = HashMap::new();
        for op in &ops {
            match *op {
                Op::Insert(k, v) | Op::InsertWithTtl(k, v, _) => { written.insert(k, v); }
                Op::Invalidate(k) => { written.remove(&k); }
                Op::Clear => written.clear(),
                Op::Get(_) | Op::MarkStale(_) | Op::Resize(_) | Op::Advance(_) => {}
            }
        }
        let setup = Setup { initial_size: 8, weighted: false, sharded: false };
        let (cache, model) = run(setup, 8, &ops);
        prop_assert_eq!(&model, &written);
        prop_assert_eq!(cache.metrics().evictions, 0);
        for (k, v) in &written {
            prop_assert_eq!(cache.get(k), Some(*v));
        }
    }
}
