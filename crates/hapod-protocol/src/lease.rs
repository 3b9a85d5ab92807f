//! Protocol version 2: orders that carry a time-bounded grant to act, and the agent's reports
//! (see `docs/protocol.md`, "Version 2", and `docs/fencing.md` for the timing argument).
//!
//! An [`Order`] tells a pod its role, like a version 1 notification, and names the pod's UID
//! so that it cannot be replayed into a recreated pod of the same name. An order for the
//! active role carries a [`Grant`]: the agent may act active for `lease_millis` counted from
//! its own earlier [`Report`] that the grant echoes (incarnation and monotonic stamp). The
//! agent measures the lease on its own monotonic clock from a moment that came before the
//! controller sent the order, so it always stops acting before the controller stops
//! counting the grant as live; no clock needs to be synchronized.
//!
//! A [`Report`] answers every order (it is the ACK) and states what the agent believes now:
//! its role ([`AgentRole`]: a lapsed grant is not active), its applied epoch, and a fresh
//! stamp for the controller to echo in its next grant.
//!
//! Layout after the common 8-byte header (version 2), integers big-endian:
//! - order (type 1): epoch 8, message id 8, sent at 8, grant incarnation 8, grant stamp 8,
//!   lease millis 4, role 1, group length 1, pod length 1, UID length 1, group, pod, UID;
//! - report (type 2): epoch 8, message id 8, incarnation 8, stamp 8, grant remaining millis
//!   4, role 1 (0 unknown, 1 active, 2 standby, 3 lapsed), UID length 1, UID.

use std::time::Duration;

use crate::codec::{
    DecodeError, EncodeError, HEADER_LEN, MAX_NAME_LEN, Role, TYPE_ACK, TYPE_NOTIFY, be_u32,
    be_u64, name_len, push_header, push_mac, unix_nanos_now, utf8,
};
use crate::key::Key;

/// The protocol version of orders and reports.
pub const LEASE_PROTOCOL_VERSION: u8 = 2;

/// Header + epoch + message id + sent at + incarnation + stamp + lease + role + 3 lengths.
pub(crate) const ORDER_FIXED_LEN: usize = HEADER_LEN + 8 * 5 + 4 + 1 + 3;
/// Header + epoch + message id + incarnation + stamp + remaining + role + UID length.
pub(crate) const REPORT_FIXED_LEN: usize = HEADER_LEN + 8 * 4 + 4 + 1 + 1;

/// The right to act active until `lease_millis` after the agent's report stamped `stamp_nanos`
/// by incarnation `incarnation` (both as the agent sent them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Grant {
    /// The agent process that the echoed stamp belongs to (never 0).
    pub incarnation: u64,
    /// The agent's monotonic clock (nanoseconds since its start) when it sent the report.
    pub stamp_nanos: u64,
    /// Lease length (1..=u32::MAX milliseconds).
    pub lease_millis: u32,
}

impl Grant {
    pub fn lease(&self) -> Duration {
        Duration::from_millis(u64::from(self.lease_millis))
    }
}

/// "Pod `pod` (UID `pod_uid`) of group `group` has role `role` at epoch `epoch`", with a grant
/// when the role is active and the controller has a report of this agent to echo.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Order {
    pub group: String,
    pub pod: String,
    /// The target pod's UID: a pod recreated under the same name rejects the order.
    pub pod_uid: String,
    pub role: Role,
    pub epoch: u64,
    /// Identifies this order in its report; unique per sender.
    pub message_id: u64,
    /// Sender's wall clock (unix nanoseconds), for latency logs only.
    pub sent_at_unix_nanos: u64,
    /// Only on an active order; an active order without one is a role the agent must not act
    /// on yet (it reports, and the next order carries the grant).
    pub grant: Option<Grant>,
}

impl Order {
    /// An order with a random message id, stamped with the current wall-clock time.
    pub fn new(
        group: impl Into<String>,
        pod: impl Into<String>,
        pod_uid: impl Into<String>,
        role: Role,
        epoch: u64,
        grant: Option<Grant>,
    ) -> Self {
        Order {
            group: group.into(),
            pod: pod.into(),
            pod_uid: pod_uid.into(),
            role,
            epoch,
            message_id: rand::random(),
            sent_at_unix_nanos: unix_nanos_now(),
            grant,
        }
    }
}

/// The role an agent reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AgentRole {
    /// Ordered active, under a live grant: the application acts active.
    Active,
    /// Ordered standby.
    Standby,
    /// Ordered active, but the grant ran out: the application does not act. A grant of the
    /// same epoch makes it active again.
    Lapsed,
}

impl AgentRole {
    /// Whether the application may act active.
    pub fn acting(self) -> bool {
        self == AgentRole::Active
    }

    /// `active`, `standby` or `lapsed`.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentRole::Active => "active",
            AgentRole::Standby => "standby",
            AgentRole::Lapsed => "lapsed",
        }
    }
}

/// What an agent believes, sent in answer to every order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Report {
    /// The order answered.
    pub message_id: u64,
    /// The agent's applied epoch (0 before any).
    pub epoch: u64,
    /// Role now: `None` before any order this process applied.
    pub role: Option<AgentRole>,
    /// Random per agent process, never 0: a restarted agent has a new one.
    pub incarnation: u64,
    /// The agent's monotonic clock at sending (nanoseconds since its start): the controller
    /// echoes it in the next grant.
    pub stamp_nanos: u64,
    /// What is left of the agent's grant (0 when not acting active).
    pub grant_remaining_millis: u32,
    /// The agent's pod UID.
    pub pod_uid: String,
}

/// Encodes an order; with a key, the HMAC-SHA256 trailer is appended.
pub fn encode_order(order: &Order, key: Option<&Key>) -> Result<Vec<u8>, EncodeError> {
    if order.pod.is_empty() {
        return Err(EncodeError::EmptyPod);
    }
    let group_len = name_len("group", &order.group)?;
    let pod_len = name_len("pod", &order.pod)?;
    let uid_len = name_len("pod UID", &order.pod_uid)?;
    let grant = order.grant.unwrap_or(Grant {
        incarnation: 0,
        stamp_nanos: 0,
        lease_millis: 0,
    });
    let fixed = [
        order.epoch,
        order.message_id,
        order.sent_at_unix_nanos,
        grant.incarnation,
        grant.stamp_nanos,
    ];
    let small = [role_wire(order.role), group_len, pod_len, uid_len];
    let names = [&order.group, &order.pod, &order.pod_uid];
    Ok(assemble(
        TYPE_NOTIFY,
        &fixed,
        grant.lease_millis,
        &small,
        &names,
        key,
    ))
}

/// Encodes a report; with a key, the HMAC-SHA256 trailer is appended.
pub fn encode_report(report: &Report, key: Option<&Key>) -> Result<Vec<u8>, EncodeError> {
    let uid_len = name_len("pod UID", &report.pod_uid)?;
    let fixed = [
        report.epoch,
        report.message_id,
        report.incarnation,
        report.stamp_nanos,
    ];
    let small = [agent_role_wire(report.role), uid_len];
    Ok(assemble(
        TYPE_ACK,
        &fixed,
        report.grant_remaining_millis,
        &small,
        &[&report.pod_uid],
        key,
    ))
}

/// A version 2 datagram: header, the 8-byte fields, the 4-byte field, the 1-byte fields, the
/// names, and the MAC when keyed.
fn assemble(
    kind: u8,
    fixed: &[u64],
    millis: u32,
    small: &[u8],
    names: &[&String],
    key: Option<&Key>,
) -> Vec<u8> {
    let names_len: usize = names.iter().map(|name| name.len()).sum();
    let mut out = Vec::with_capacity(HEADER_LEN + 8 * fixed.len() + 4 + small.len() + names_len);
    push_header(&mut out, LEASE_PROTOCOL_VERSION, kind, key);
    for field in fixed {
        out.extend_from_slice(&field.to_be_bytes());
    }
    out.extend_from_slice(&millis.to_be_bytes());
    out.extend_from_slice(small);
    for name in names {
        out.extend_from_slice(name.as_bytes());
    }
    push_mac(&mut out, key);
    out
}

/// Decodes an authenticated version 2 order; `body` is the whole datagram without its MAC.
pub(crate) fn decode_order(body: &[u8]) -> Result<Order, DecodeError> {
    if body.len() < ORDER_FIXED_LEN {
        return Err(DecodeError::Truncated(body.len()));
    }
    let field = |index: usize| be_u64(&body[HEADER_LEN + 8 * index..HEADER_LEN + 8 * index + 8]);
    let lease_millis = be_u32(&body[HEADER_LEN + 40..HEADER_LEN + 44]);
    let role = match body[HEADER_LEN + 44] {
        1 => Role::Active,
        2 => Role::Standby,
        other => return Err(DecodeError::UnknownRole(other)),
    };
    let lengths = &body[HEADER_LEN + 45..ORDER_FIXED_LEN];
    let [group, pod, pod_uid] = names(&body[ORDER_FIXED_LEN..], lengths)?;
    if pod.is_empty() {
        return Err(DecodeError::EmptyPod);
    }
    let (incarnation, stamp_nanos) = (field(3), field(4));
    let grant = match (incarnation, lease_millis) {
        (0, 0) if stamp_nanos == 0 => None,
        (0, _) | (_, 0) => return Err(DecodeError::BadGrant),
        _ => Some(Grant {
            incarnation,
            stamp_nanos,
            lease_millis,
        }),
    };
    if grant.is_some() && role != Role::Active {
        return Err(DecodeError::BadGrant);
    }
    Ok(Order {
        group,
        pod,
        pod_uid,
        role,
        epoch: field(0),
        message_id: field(1),
        sent_at_unix_nanos: field(2),
        grant,
    })
}

/// Decodes an authenticated version 2 report; `body` is the whole datagram without its MAC.
pub(crate) fn decode_report(body: &[u8]) -> Result<Report, DecodeError> {
    if body.len() < REPORT_FIXED_LEN {
        return Err(DecodeError::Truncated(body.len()));
    }
    let field = |index: usize| be_u64(&body[HEADER_LEN + 8 * index..HEADER_LEN + 8 * index + 8]);
    let incarnation = field(2);
    if incarnation == 0 {
        return Err(DecodeError::BadGrant);
    }
    let [pod_uid] = names(
        &body[REPORT_FIXED_LEN..],
        &body[REPORT_FIXED_LEN - 1..REPORT_FIXED_LEN],
    )?;
    Ok(Report {
        epoch: field(0),
        message_id: field(1),
        incarnation,
        stamp_nanos: field(3),
        grant_remaining_millis: be_u32(&body[HEADER_LEN + 32..HEADER_LEN + 36]),
        role: agent_role_from_wire(body[HEADER_LEN + 36])?,
        pod_uid,
    })
}

/// Splits `rest` into names of the given lengths; they must fill it exactly.
fn names<const N: usize>(rest: &[u8], lengths: &[u8]) -> Result<[String; N], DecodeError> {
    let total: usize = lengths.iter().map(|len| usize::from(*len)).sum();
    if lengths.len() != N
        || total != rest.len()
        || lengths.iter().any(|len| usize::from(*len) > MAX_NAME_LEN)
    {
        return Err(DecodeError::LengthMismatch);
    }
    let mut out: [String; N] = std::array::from_fn(|_| String::new());
    let mut at = 0;
    for (name, len) in out.iter_mut().zip(lengths) {
        let len = usize::from(*len);
        *name = utf8(&rest[at..at + len])?;
        at += len;
    }
    Ok(out)
}

fn role_wire(role: Role) -> u8 {
    match role {
        Role::Active => 1,
        Role::Standby => 2,
    }
}

fn agent_role_wire(role: Option<AgentRole>) -> u8 {
    match role {
        None => 0,
        Some(AgentRole::Active) => 1,
        Some(AgentRole::Standby) => 2,
        Some(AgentRole::Lapsed) => 3,
    }
}

fn agent_role_from_wire(byte: u8) -> Result<Option<AgentRole>, DecodeError> {
    match byte {
        0 => Ok(None),
        1 => Ok(Some(AgentRole::Active)),
        2 => Ok(Some(AgentRole::Standby)),
        3 => Ok(Some(AgentRole::Lapsed)),
        other => Err(DecodeError::UnknownRole(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Message, decode};
    use proptest::prelude::*;

    fn grant() -> Grant {
        Grant {
            incarnation: 0xfeed,
            stamp_nanos: 123_456_789,
            lease_millis: 300,
        }
    }

    fn order() -> Order {
        Order {
            group: "default/hapod".into(),
            pod: "hapod-5d8f7-abcde".into(),
            pod_uid: "0d6a1c2e-1111-2222-3333-444455556666".into(),
            role: Role::Active,
            epoch: (7 << 32) | 3,
            message_id: 42,
            sent_at_unix_nanos: 1_700_000_000_000_000_000,
            grant: Some(grant()),
        }
    }

    fn report() -> Report {
        Report {
            message_id: 42,
            epoch: (7 << 32) | 3,
            role: Some(AgentRole::Active),
            incarnation: 0xfeed,
            stamp_nanos: 987_654_321,
            grant_remaining_millis: 250,
            pod_uid: "0d6a1c2e-1111-2222-3333-444455556666".into(),
        }
    }

    fn key() -> Key {
        Key::new(b"0123456789abcdef0123456789abcdef").unwrap()
    }

    #[test]
    fn order_layout_is_as_documented() {
        let bytes = encode_order(&order(), None).unwrap();
        assert_eq!(&bytes[0..8], b"HAPD\x02\x01\x00\x00");
        assert_eq!(&bytes[8..16], &((7u64 << 32) | 3).to_be_bytes());
        assert_eq!(&bytes[32..40], &0xfeedu64.to_be_bytes());
        assert_eq!(&bytes[40..48], &123_456_789u64.to_be_bytes());
        assert_eq!(&bytes[48..52], &300u32.to_be_bytes());
        assert_eq!(bytes[52..56], [1, 13, 17, 36]);
        assert_eq!(&bytes[56..69], b"default/hapod");
        assert_eq!(bytes.len(), ORDER_FIXED_LEN + 13 + 17 + 36);
    }

    #[test]
    fn report_layout_is_as_documented() {
        let bytes = encode_report(&report(), None).unwrap();
        assert_eq!(&bytes[0..8], b"HAPD\x02\x02\x00\x00");
        assert_eq!(&bytes[24..32], &0xfeedu64.to_be_bytes());
        assert_eq!(&bytes[40..44], &250u32.to_be_bytes());
        assert_eq!(bytes[44..46], [1, 36]);
        assert_eq!(bytes.len(), REPORT_FIXED_LEN + 36);
    }

    #[test]
    fn orders_and_reports_round_trip_with_and_without_key() {
        for key in [None, Some(key())] {
            let standby = Order {
                role: Role::Standby,
                grant: None,
                ..order()
            };
            for order in [order(), standby] {
                let bytes = encode_order(&order, key.as_ref()).unwrap();
                assert_eq!(decode(&bytes, key.as_ref()), Ok(Message::Order(order)));
            }
            let unknown = Report {
                role: None,
                ..report()
            };
            let lapsed = Report {
                role: Some(AgentRole::Lapsed),
                ..report()
            };
            for report in [report(), unknown, lapsed] {
                let bytes = encode_report(&report, key.as_ref()).unwrap();
                assert_eq!(decode(&bytes, key.as_ref()), Ok(Message::Report(report)));
            }
        }
    }

    #[test]
    fn a_grant_on_a_standby_order_or_a_half_grant_is_rejected() {
        let mut bytes = encode_order(
            &Order {
                role: Role::Standby,
                ..order()
            },
            None,
        )
        .unwrap();
        assert_eq!(decode(&bytes, None), Err(DecodeError::BadGrant));
        // lease 0 with an incarnation set
        bytes[48..52].copy_from_slice(&0u32.to_be_bytes());
        bytes[52] = 1;
        assert_eq!(decode(&bytes, None), Err(DecodeError::BadGrant));
    }

    #[test]
    fn the_longest_order_is_the_longest_datagram() {
        let longest = Order {
            group: "g".repeat(MAX_NAME_LEN),
            pod: "p".repeat(MAX_NAME_LEN),
            pod_uid: "u".repeat(MAX_NAME_LEN),
            ..order()
        };
        let bytes = encode_order(&longest, Some(&key())).unwrap();
        assert_eq!(bytes.len(), crate::MAX_DATAGRAM_LEN);
        assert_eq!(decode(&bytes, Some(&key())), Ok(Message::Order(longest)));
    }

    #[test]
    fn a_report_without_incarnation_is_rejected() {
        let mut bytes = encode_report(&report(), None).unwrap();
        bytes[24..32].copy_from_slice(&0u64.to_be_bytes());
        assert_eq!(decode(&bytes, None), Err(DecodeError::BadGrant));
    }

    #[test]
    fn an_order_without_pod_is_not_encoded_and_not_decoded() {
        let empty = Order {
            pod: String::new(),
            ..order()
        };
        assert_eq!(encode_order(&empty, None), Err(EncodeError::EmptyPod));
        let mut bytes = encode_order(&order(), None).unwrap();
        // move the pod's 17 bytes into the group: pod length 0, same total
        bytes[53] = 13 + 17;
        bytes[54] = 0;
        assert_eq!(decode(&bytes, None), Err(DecodeError::EmptyPod));
    }

    proptest! {
        #[test]
        fn any_mutation_of_a_signed_order_is_rejected(index in 0usize..122, bit in 0u8..8) {
            let bytes = encode_order(&order(), Some(&key())).unwrap();
            let mut mutated = bytes.clone();
            let index = index % bytes.len();
            mutated[index] ^= 1 << bit;
            prop_assert!(decode(&mutated, Some(&key())).is_err());
        }

        #[test]
        fn arbitrary_version_2_bodies_never_panic(
            kind in 1u8..=2,
            body in proptest::collection::vec(any::<u8>(), 0..400),
        ) {
            let mut bytes = b"HAPD\x02\x00\x00\x00".to_vec();
            bytes[5] = kind;
            bytes.extend_from_slice(&body);
            let _ = decode(&bytes, None);
        }
    }
}
