//! The receiver's decision for one datagram, without I/O (see `docs/protocol.md`, "Validation").

use hapod_protocol::{Ack, DecodeError, Key, LEGACY_PAYLOAD, Message, Notification, Order, decode};

/// What to do with one datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A newer epoch for this pod: publish it, then acknowledge.
    Apply(Notification),
    /// The epoch already applied: acknowledge again, change nothing.
    Reack(Ack),
    /// The original system's datagram, accepted by configuration: become active.
    Legacy,
    /// A version 2 order for this pod: its UID and epoch are judged by the lease
    /// ([`crate::lease::LeaseHolder`]).
    Order(Order),
    Drop(DropReason),
}

/// Why a datagram was dropped; each reason has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReason {
    /// Longer than any valid datagram.
    Oversized,
    /// Not a well-formed message of a supported version (garbage, truncated, bad lengths).
    Malformed,
    /// Missing or wrong MAC while a key is configured.
    Unauthenticated,
    /// Addressed to another pod.
    WrongPod,
    /// A version 2 order naming another pod UID (a recreated pod of the same name, a replay).
    WrongUid,
    /// A version 2 order the agent could not record its epoch for (the epoch file).
    NotRecorded,
    /// An epoch older than the last applied one.
    Stale,
    /// The legacy datagram while legacy mode is off.
    LegacyDisabled,
    /// An ACK: only the controller receives those.
    UnexpectedAck,
}

impl DropReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DropReason::Oversized => "oversized",
            DropReason::Malformed => "malformed",
            DropReason::Unauthenticated => "unauthenticated",
            DropReason::WrongPod => "wrong pod",
            DropReason::WrongUid => "wrong pod UID",
            DropReason::NotRecorded => "epoch could not be recorded",
            DropReason::Stale => "stale epoch",
            DropReason::LegacyDisabled => "legacy datagram while legacy mode is off",
            DropReason::UnexpectedAck => "unexpected ack",
        }
    }
}

/// Validates datagrams against the pod name, the key and the last applied epoch.
#[derive(Debug)]
pub(crate) struct Validator {
    pod_name: String,
    key: Option<Key>,
    accept_legacy: bool,
    /// Last applied epoch; `None` until the first versioned notification is applied (the
    /// legacy datagram carries no epoch and does not set it).
    last_epoch: Option<u64>,
}

impl Validator {
    pub(crate) fn new(pod_name: String, key: Option<Key>, accept_legacy: bool) -> Self {
        Validator {
            pod_name,
            key,
            accept_legacy,
            last_epoch: None,
        }
    }

    pub(crate) fn key(&self) -> Option<&Key> {
        self.key.as_ref()
    }

    pub(crate) fn judge(&mut self, datagram: &[u8]) -> Verdict {
        if datagram == LEGACY_PAYLOAD {
            return if self.accept_legacy {
                Verdict::Legacy
            } else {
                Verdict::Drop(DropReason::LegacyDisabled)
            };
        }
        let msg = match decode(datagram, self.key.as_ref()) {
            Ok(Message::Notify(msg)) => msg,
            Ok(Message::Order(order)) if order.pod != self.pod_name => {
                return Verdict::Drop(DropReason::WrongPod);
            }
            Ok(Message::Order(order)) => return Verdict::Order(order),
            Ok(Message::Ack(_) | Message::Report(_)) => {
                return Verdict::Drop(DropReason::UnexpectedAck);
            }
            Err(DecodeError::Oversized(_)) => return Verdict::Drop(DropReason::Oversized),
            Err(DecodeError::MissingMac | DecodeError::BadMac) => {
                return Verdict::Drop(DropReason::Unauthenticated);
            }
            Err(_) => return Verdict::Drop(DropReason::Malformed),
        };
        if msg.pod != self.pod_name {
            return Verdict::Drop(DropReason::WrongPod);
        }
        match self.last_epoch {
            Some(last) if msg.epoch == last => Verdict::Reack(msg.ack()),
            Some(last) if msg.epoch < last => Verdict::Drop(DropReason::Stale),
            _ => {
                self.last_epoch = Some(msg.epoch);
                Verdict::Apply(msg)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hapod_protocol::{Role, encode, encode_ack};

    fn msg(pod: &str, role: Role, epoch: u64) -> Notification {
        Notification::new("g", pod, role, epoch)
    }

    fn key() -> Key {
        Key::new(b"secret").unwrap()
    }

    #[test]
    fn applies_newer_reacks_same_rejects_older() {
        let mut v = Validator::new("me".into(), Some(key()), false);
        let first = msg("me", Role::Active, 5);
        let bytes = encode(&first, Some(&key())).unwrap();
        assert_eq!(v.judge(&bytes), Verdict::Apply(first.clone()));
        assert_eq!(v.judge(&bytes), Verdict::Reack(first.ack()));
        // Same epoch, other role: the epoch was already decided, so only re-acknowledge.
        let same_epoch = msg("me", Role::Standby, 5);
        let same_bytes = encode(&same_epoch, Some(&key())).unwrap();
        assert_eq!(v.judge(&same_bytes), Verdict::Reack(same_epoch.ack()));
        let older = encode(&msg("me", Role::Standby, 4), Some(&key())).unwrap();
        assert_eq!(v.judge(&older), Verdict::Drop(DropReason::Stale));
        let newer = msg("me", Role::Standby, 6);
        let newer_bytes = encode(&newer, Some(&key())).unwrap();
        assert_eq!(v.judge(&newer_bytes), Verdict::Apply(newer));
    }

    #[test]
    fn drops_other_pods_forgeries_acks_and_garbage() {
        let mut v = Validator::new("me".into(), Some(key()), false);
        let other_pod = encode(&msg("you", Role::Active, 1), Some(&key())).unwrap();
        assert_eq!(v.judge(&other_pod), Verdict::Drop(DropReason::WrongPod));
        let unsigned = encode(&msg("me", Role::Active, 1), None).unwrap();
        assert_eq!(
            v.judge(&unsigned),
            Verdict::Drop(DropReason::Unauthenticated)
        );
        let wrong_key = Key::new(b"guess").unwrap();
        let forged = encode(&msg("me", Role::Active, 1), Some(&wrong_key)).unwrap();
        assert_eq!(v.judge(&forged), Verdict::Drop(DropReason::Unauthenticated));
        let ack = encode_ack(&msg("me", Role::Active, 1).ack(), Some(&key()));
        assert_eq!(v.judge(&ack), Verdict::Drop(DropReason::UnexpectedAck));
        assert_eq!(v.judge(b"hello"), Verdict::Drop(DropReason::Malformed));
        assert_eq!(v.judge(&[0u8; 4096]), Verdict::Drop(DropReason::Oversized));
        assert_eq!(
            v.judge(LEGACY_PAYLOAD),
            Verdict::Drop(DropReason::LegacyDisabled)
        );
        // None of this moved the epoch: the first real message applies.
        let real = msg("me", Role::Active, 1);
        let real_bytes = encode(&real, Some(&key())).unwrap();
        assert_eq!(v.judge(&real_bytes), Verdict::Apply(real));
    }

    #[test]
    fn legacy_datagram_only_when_enabled() {
        let mut v = Validator::new("me".into(), None, true);
        assert_eq!(v.judge(LEGACY_PAYLOAD), Verdict::Legacy);
        let mut legacy_newline = LEGACY_PAYLOAD.to_vec();
        legacy_newline.push(b'\n');
        assert_eq!(
            v.judge(&legacy_newline),
            Verdict::Drop(DropReason::Malformed)
        );
    }
}
