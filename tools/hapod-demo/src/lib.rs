//! placeholder, replaced by the owning work stream.
