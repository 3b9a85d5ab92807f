//! Epochs (fencing tokens): `(controller term << 32) | sequence`.
//!
//! The term comes from the election Lease and grows with every acquisition, so every epoch
//! issued by a newer acting replica is larger than every epoch issued before it. The sequence
//! is counted per group by the acting replica and starts at 1 in each term.

/// Builds the epoch of the `seq`-th promotion of a group in controller term `term`.
pub fn compose(term: u32, seq: u32) -> u64 {
    (u64::from(term) << 32) | u64::from(seq)
}

/// Term part of an epoch.
pub fn term_of(epoch: u64) -> u32 {
    // Truncation is the point: the upper half is the term.
    (epoch >> 32) as u32
}

/// Sequence part of an epoch.
pub fn seq_of(epoch: u64) -> u32 {
    // Truncation is the point: the lower half is the sequence.
    epoch as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compose_splits_back_and_orders_by_term_first() {
        let e = compose(7, 3);
        assert_eq!(e, (7 << 32) | 3);
        assert_eq!((term_of(e), seq_of(e)), (7, 3));
        assert!(compose(8, 1) > compose(7, u32::MAX));
    }
}
