//! Strategies and helpers shared by the property tests of the wire formats, over the settings
//! every property test of the workspace shares (`fuzz`).

#![allow(dead_code)] // Each test binary uses a different part of this module.

use proptest::prelude::*;
use serde_json::Value;

mod fuzz;
pub use fuzz::*;

/// Any JSON value, up to a few levels deep: the payloads, configurations and documents that
/// travel inside frames.
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        // JSON has no NaN or infinity; every finite float must survive.
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// How a valid encoding is damaged.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Flip one bit (index taken modulo the length).
    FlipBit(usize, u8),
    /// Keep only the first bytes (length taken modulo the length).
    Truncate(usize),
    /// Append bytes.
    Append(Vec<u8>),
    /// Overwrite one byte.
    SetByte(usize, u8),
}

/// Any [`Mutation`].
pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        prop::collection::vec(any::<u8>(), 1..16).prop_map(Mutation::Append),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
    ]
}

impl Mutation {
    /// Applies the mutation; an empty input is only ever appended to.
    pub fn apply(&self, bytes: &[u8]) -> Vec<u8> {
        let mut out = bytes.to_vec();
        if out.is_empty() {
            if let Mutation::Append(tail) = self {
                out.extend_from_slice(tail);
            }
            return out;
        }
        let len = out.len();
        match self {
            Mutation::FlipBit(i, bit) => out[i % len] ^= 1 << bit,
            Mutation::Truncate(n) => out.truncate(n % len),
            Mutation::Append(tail) => out.extend_from_slice(tail),
            Mutation::SetByte(i, b) => out[i % len] = *b,
        }
        out
    }
}
