//! Byte layout of the versioned notification and ACK datagrams (see `docs/protocol.md`).
//!
//! All integers are big-endian. Every datagram starts with the same 8-byte header:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `HAPD` |
//! | 4 | 1 | version (1) |
//! | 5 | 1 | type: 1 = notify, 2 = ack |
//! | 6 | 1 | flags: bit 0 = HMAC-SHA256 appended; other bits must be 0 |
//! | 7 | 1 | reserved, must be 0 |
//!
//! A notify body is epoch (8), message id (8), sent-at unix nanos (8), role (1), group length
//! (1), pod length (1), group bytes, pod bytes. An ACK body is epoch (8), message id (8). When
//! the MAC flag is set, the last 32 bytes are HMAC-SHA256 over every byte before them.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::key::Key;
use crate::lease::{self, ORDER_FIXED_LEN, Order, REPORT_FIXED_LEN, Report};

/// The original system's become-active datagram (22 ASCII bytes, no newline, no ACK).
pub const LEGACY_PAYLOAD: &[u8] = b"GoActiveDuringFailover";

/// The version of notifications and ACKs; version 2 (orders with grants, and reports) is in
/// [`LEASE_PROTOCOL_VERSION`](crate::LEASE_PROTOCOL_VERSION).
pub const PROTOCOL_VERSION: u8 = 1;

/// Length of the HMAC-SHA256 trailer.
pub const MAC_LEN: usize = 32;

/// Longest group or pod name (bytes): a Kubernetes object name is at most 253 characters.
pub const MAX_NAME_LEN: usize = 253;

/// Longest valid datagram: a version 2 order with three maximal names and a MAC (847 bytes,
/// under the 1232-byte payload that IPv6 delivers without fragmentation).
pub const MAX_DATAGRAM_LEN: usize = ORDER_FIXED_LEN + 3 * MAX_NAME_LEN + MAC_LEN;

const MAGIC: [u8; 4] = *b"HAPD";
pub(crate) const HEADER_LEN: usize = 8;
/// Type of a notification (version 1) or an order (version 2).
pub(crate) const TYPE_NOTIFY: u8 = 1;
/// Type of an ACK (version 1) or a report (version 2).
pub(crate) const TYPE_ACK: u8 = 2;
const FLAG_MAC: u8 = 0b0000_0001;
/// Header + epoch + message id + sent-at + role + two name lengths.
const NOTIFY_FIXED_LEN: usize = HEADER_LEN + 8 + 8 + 8 + 1 + 1 + 1;
/// Header + epoch + message id.
const ACK_LEN: usize = HEADER_LEN + 8 + 8;

/// The role the controller assigns to a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Active,
    Standby,
}

impl Role {
    /// The label value and file content for this role: `active` or `standby`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Active => "active",
            Role::Standby => "standby",
        }
    }

    fn wire(self) -> u8 {
        match self {
            Role::Active => 1,
            Role::Standby => 2,
        }
    }

    fn from_wire(byte: u8) -> Result<Role, DecodeError> {
        match byte {
            1 => Ok(Role::Active),
            2 => Ok(Role::Standby),
            other => Err(DecodeError::UnknownRole(other)),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// "Pod `pod` of group `group` now has role `role`, decided at fencing token `epoch`."
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Notification {
    /// Opaque group name (at most [`MAX_NAME_LEN`] bytes); the sender keys outstanding
    /// messages by (group, pod), so it should be unique across namespaces.
    pub group: String,
    /// Name of the target pod (1..=[`MAX_NAME_LEN`] bytes); the receiver drops messages for
    /// any other pod.
    pub pod: String,
    pub role: Role,
    /// The controller's fencing token; a receiver applies only epochs newer than its last.
    pub epoch: u64,
    /// Identifies this message in its ACK; unique per sender.
    pub message_id: u64,
    /// Sender's wall clock when the decision was made (unix nanoseconds), for latency logs.
    pub sent_at_unix_nanos: u64,
}

impl Notification {
    /// A notification with a random message id, stamped with the current wall-clock time.
    pub fn new(group: impl Into<String>, pod: impl Into<String>, role: Role, epoch: u64) -> Self {
        Notification {
            group: group.into(),
            pod: pod.into(),
            role,
            epoch,
            message_id: rand::random(),
            sent_at_unix_nanos: unix_nanos_now(),
        }
    }

    /// The ACK a receiver answers to this notification.
    pub fn ack(&self) -> Ack {
        Ack {
            message_id: self.message_id,
            epoch: self.epoch,
        }
    }
}

/// Receipt of a notification: the receiver has applied (or had already applied) `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ack {
    pub message_id: u64,
    pub epoch: u64,
}

/// A decoded datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Notify(Notification),
    Ack(Ack),
    /// Version 2: a role with the pod's UID, and a grant to act when active.
    Order(Order),
    /// Version 2: the agent's answer to an order, with what it believes now.
    Report(Report),
}

/// Why a notification cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("pod name is empty")]
    EmptyPod,
    #[error("{field} is {len} bytes long, the limit is {MAX_NAME_LEN}")]
    NameTooLong { field: &'static str, len: usize },
}

/// Why a datagram was rejected. Every malformed or forged input maps to one of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("datagram of {0} bytes is shorter than its fixed fields")]
    Truncated(usize),
    #[error("datagram of {0} bytes exceeds the {MAX_DATAGRAM_LEN}-byte limit")]
    Oversized(usize),
    #[error("bad magic")]
    BadMagic,
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    #[error("unknown message type {0}")]
    UnknownType(u8),
    #[error("unknown flag or reserved bits set")]
    ReservedBits,
    #[error("unknown role {0}")]
    UnknownRole(u8),
    #[error("name lengths do not match the datagram length")]
    LengthMismatch,
    #[error("empty pod name")]
    EmptyPod,
    #[error("name is not valid UTF-8")]
    InvalidName,
    #[error("a key is configured but the datagram carries no MAC")]
    MissingMac,
    #[error("MAC does not verify")]
    BadMac,
    #[error(
        "grant fields are inconsistent (half a grant, a grant on a standby order, or no incarnation)"
    )]
    BadGrant,
}

/// Wall-clock time as unix nanoseconds (0 before 1970, saturating in 2554).
pub fn unix_nanos_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Encodes a notification; with a key, the HMAC-SHA256 trailer is appended.
pub fn encode(msg: &Notification, key: Option<&Key>) -> Result<Vec<u8>, EncodeError> {
    if msg.pod.is_empty() {
        return Err(EncodeError::EmptyPod);
    }
    let group_len = name_len("group", &msg.group)?;
    let pod_len = name_len("pod", &msg.pod)?;
    let mut out = Vec::with_capacity(NOTIFY_FIXED_LEN + msg.group.len() + msg.pod.len() + MAC_LEN);
    push_header(&mut out, PROTOCOL_VERSION, TYPE_NOTIFY, key);
    out.extend_from_slice(&msg.epoch.to_be_bytes());
    out.extend_from_slice(&msg.message_id.to_be_bytes());
    out.extend_from_slice(&msg.sent_at_unix_nanos.to_be_bytes());
    out.extend_from_slice(&[msg.role.wire(), group_len, pod_len]);
    out.extend_from_slice(msg.group.as_bytes());
    out.extend_from_slice(msg.pod.as_bytes());
    push_mac(&mut out, key);
    Ok(out)
}

/// Encodes an ACK; with a key, the HMAC-SHA256 trailer is appended.
pub fn encode_ack(ack: &Ack, key: Option<&Key>) -> Vec<u8> {
    let mut out = Vec::with_capacity(ACK_LEN + MAC_LEN);
    push_header(&mut out, PROTOCOL_VERSION, TYPE_ACK, key);
    out.extend_from_slice(&ack.epoch.to_be_bytes());
    out.extend_from_slice(&ack.message_id.to_be_bytes());
    push_mac(&mut out, key);
    out
}

/// Decodes and authenticates a datagram.
///
/// With a key, a datagram without a MAC or with a MAC that does not verify is rejected. Without
/// a key, a MAC trailer is skipped unverified (the receiver runs unauthenticated).
pub fn decode(datagram: &[u8], key: Option<&Key>) -> Result<Message, DecodeError> {
    if datagram.len() > MAX_DATAGRAM_LEN {
        return Err(DecodeError::Oversized(datagram.len()));
    }
    if datagram.len() < HEADER_LEN {
        return Err(DecodeError::Truncated(datagram.len()));
    }
    if datagram[0..4] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let version = datagram[4];
    let kind = datagram[5];
    let flags = datagram[6];
    if version != PROTOCOL_VERSION && version != lease::LEASE_PROTOCOL_VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    if flags & !FLAG_MAC != 0 || datagram[7] != 0 {
        return Err(DecodeError::ReservedBits);
    }
    let fixed_len = match (version, kind) {
        (PROTOCOL_VERSION, TYPE_NOTIFY) => NOTIFY_FIXED_LEN,
        (PROTOCOL_VERSION, TYPE_ACK) => ACK_LEN,
        (_, TYPE_NOTIFY) => ORDER_FIXED_LEN,
        (_, TYPE_ACK) => REPORT_FIXED_LEN,
        (_, other) => return Err(DecodeError::UnknownType(other)),
    };
    let has_mac = flags & FLAG_MAC != 0;
    let mac_len = if has_mac { MAC_LEN } else { 0 };
    if datagram.len() < fixed_len + mac_len {
        return Err(DecodeError::Truncated(datagram.len()));
    }
    let (body, tag) = datagram.split_at(datagram.len() - mac_len);
    if let Some(key) = key {
        if !has_mac {
            return Err(DecodeError::MissingMac);
        }
        if !key.verify(body, tag) {
            return Err(DecodeError::BadMac);
        }
    }
    match (version, kind) {
        (PROTOCOL_VERSION, _) => {}
        (_, TYPE_NOTIFY) => return lease::decode_order(body).map(Message::Order),
        _ => return lease::decode_report(body).map(Message::Report),
    }
    let epoch = be_u64(&body[8..16]);
    let message_id = be_u64(&body[16..24]);
    if kind == TYPE_ACK {
        if body.len() != ACK_LEN {
            return Err(DecodeError::LengthMismatch);
        }
        return Ok(Message::Ack(Ack { message_id, epoch }));
    }
    let sent_at_unix_nanos = be_u64(&body[24..32]);
    let role = Role::from_wire(body[32])?;
    let group_len = usize::from(body[33]);
    let pod_len = usize::from(body[34]);
    if group_len > MAX_NAME_LEN
        || pod_len > MAX_NAME_LEN
        || body.len() != NOTIFY_FIXED_LEN + group_len + pod_len
    {
        return Err(DecodeError::LengthMismatch);
    }
    if pod_len == 0 {
        return Err(DecodeError::EmptyPod);
    }
    let names = &body[NOTIFY_FIXED_LEN..];
    let (group, pod) = names.split_at(group_len);
    Ok(Message::Notify(Notification {
        group: utf8(group)?,
        pod: utf8(pod)?,
        role,
        epoch,
        message_id,
        sent_at_unix_nanos,
    }))
}

pub(crate) fn push_header(out: &mut Vec<u8>, version: u8, kind: u8, key: Option<&Key>) {
    let flags = if key.is_some() { FLAG_MAC } else { 0 };
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[version, kind, flags, 0]);
}

pub(crate) fn push_mac(out: &mut Vec<u8>, key: Option<&Key>) {
    if let Some(key) = key {
        let tag = key.mac(out);
        out.extend_from_slice(&tag);
    }
}

pub(crate) fn name_len(field: &'static str, name: &str) -> Result<u8, EncodeError> {
    match u8::try_from(name.len()) {
        Ok(len) if usize::from(len) <= MAX_NAME_LEN => Ok(len),
        _ => Err(EncodeError::NameTooLong {
            field,
            len: name.len(),
        }),
    }
}

pub(crate) fn be_u64(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(bytes);
    u64::from_be_bytes(buf)
}

pub(crate) fn be_u32(bytes: &[u8]) -> u32 {
    let mut buf = [0u8; 4];
    buf.copy_from_slice(bytes);
    u32::from_be_bytes(buf)
}

pub(crate) fn utf8(bytes: &[u8]) -> Result<String, DecodeError> {
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| DecodeError::InvalidName)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Notification {
        Notification {
            group: "default/hapod".into(),
            pod: "hapod-5d8f7-abcde".into(),
            role: Role::Active,
            epoch: (7 << 32) | 3,
            message_id: 0x0102_0304_0506_0708,
            sent_at_unix_nanos: 1_700_000_000_123_456_789,
        }
    }

    fn key() -> Key {
        Key::new(b"0123456789abcdef0123456789abcdef").unwrap()
    }

    #[test]
    fn notify_layout_is_as_documented() {
        let bytes = encode(&sample(), None).unwrap();
        assert_eq!(&bytes[0..8], b"HAPD\x01\x01\x00\x00");
        assert_eq!(&bytes[8..16], &((7u64 << 32) | 3).to_be_bytes());
        assert_eq!(&bytes[16..24], &0x0102_0304_0506_0708u64.to_be_bytes());
        assert_eq!(bytes[32..35], [1, 13, 17]);
        assert_eq!(&bytes[35..48], b"default/hapod");
        assert_eq!(&bytes[48..], b"hapod-5d8f7-abcde");
    }

    #[test]
    fn round_trips_with_and_without_key() {
        let msg = sample();
        for key in [None, Some(key())] {
            let bytes = encode(&msg, key.as_ref()).unwrap();
            assert_eq!(
                decode(&bytes, key.as_ref()).unwrap(),
                Message::Notify(msg.clone())
            );
            let ack = encode_ack(&msg.ack(), key.as_ref());
            assert_eq!(decode(&ack, key.as_ref()).unwrap(), Message::Ack(msg.ack()));
        }
    }

    #[test]
    fn keyed_receiver_rejects_missing_and_wrong_mac() {
        let msg = sample();
        let plain = encode(&msg, None).unwrap();
        assert_eq!(decode(&plain, Some(&key())), Err(DecodeError::MissingMac));
        let other = Key::new(b"another key").unwrap();
        let forged = encode(&msg, Some(&other)).unwrap();
        assert_eq!(decode(&forged, Some(&key())), Err(DecodeError::BadMac));
        let forged_ack = encode_ack(&msg.ack(), Some(&other));
        assert_eq!(decode(&forged_ack, Some(&key())), Err(DecodeError::BadMac));
    }

    #[test]
    fn rejects_bad_names_and_limits() {
        let mut msg = sample();
        msg.pod.clear();
        assert_eq!(encode(&msg, None), Err(EncodeError::EmptyPod));
        msg.pod = "p".repeat(MAX_NAME_LEN + 1);
        assert!(matches!(
            encode(&msg, None),
            Err(EncodeError::NameTooLong { field: "pod", .. })
        ));
        msg.pod = "p".repeat(MAX_NAME_LEN);
        msg.group = "g".repeat(MAX_NAME_LEN);
        let longest = encode(&msg, Some(&key())).unwrap();
        // the longest version 1 datagram; version 2 orders may be longer (their UID)
        assert_eq!(longest.len(), 573);
        assert!(decode(&longest, Some(&key())).is_ok());
        assert_eq!(
            decode(&[0u8; MAX_DATAGRAM_LEN + 1], None),
            Err(DecodeError::Oversized(MAX_DATAGRAM_LEN + 1))
        );
        assert_eq!(decode(LEGACY_PAYLOAD, None), Err(DecodeError::BadMagic));
    }

    #[test]
    fn key_file_drops_trailing_newline() {
        let dir = std::env::temp_dir().join(format!("hapod-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        std::fs::write(&path, b"secret\r\n").unwrap();
        let from_file = Key::from_file(&path).unwrap();
        let bytes = encode(&sample(), Some(&from_file)).unwrap();
        let direct = Key::new(b"secret").unwrap();
        assert!(decode(&bytes, Some(&direct)).is_ok());
        std::fs::write(&path, b"\n").unwrap();
        assert!(matches!(
            Key::from_file(&path),
            Err(crate::KeyError::EmptyFile(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn any_notification() -> impl Strategy<Value = Notification> {
        (
            "[a-z0-9/-]{0,60}",
            "[a-z0-9-]{1,60}",
            any::<bool>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(
                |(group, pod, active, epoch, message_id, sent)| Notification {
                    group,
                    pod,
                    role: if active { Role::Active } else { Role::Standby },
                    epoch,
                    message_id,
                    sent_at_unix_nanos: sent,
                },
            )
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_nor_verify(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            let _ = decode(&bytes, None);
            // A random 32-byte tag verifies with probability 2^-256.
            prop_assert!(decode(&bytes, Some(&key())).is_err());
        }

        #[test]
        fn valid_header_with_arbitrary_body_never_verifies(
            kind in 1u8..=2,
            body in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            let mut bytes = b"HAPD\x01".to_vec();
            bytes.extend_from_slice(&[kind, FLAG_MAC, 0]);
            bytes.extend_from_slice(&body);
            let _ = decode(&bytes, None);
            prop_assert!(decode(&bytes, Some(&key())).is_err());
        }

        #[test]
        fn encoded_notifications_round_trip(msg in any_notification()) {
            let bytes = encode(&msg, Some(&key())).unwrap();
            prop_assert_eq!(decode(&bytes, Some(&key())).unwrap(), Message::Notify(msg));
        }

        #[test]
        fn any_mutation_of_a_signed_message_is_rejected(
            msg in any_notification(),
            index in any::<proptest::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let mut bytes = encode(&msg, Some(&key())).unwrap();
            let at = index.index(bytes.len());
            bytes[at] ^= flip;
            prop_assert!(decode(&bytes, Some(&key())).is_err());
        }

        #[test]
        fn truncated_or_extended_signed_messages_are_rejected(
            msg in any_notification(),
            cut in any::<proptest::sample::Index>(),
            extra in proptest::collection::vec(any::<u8>(), 1..40),
        ) {
            let bytes = encode(&msg, Some(&key())).unwrap();
            let cut = cut.index(bytes.len());
            prop_assert!(decode(&bytes[..cut], Some(&key())).is_err());
            let mut longer = bytes.clone();
            longer.extend_from_slice(&extra);
            prop_assert!(decode(&longer, Some(&key())).is_err());
        }
    }
}
