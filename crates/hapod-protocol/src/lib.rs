//! The hapod notification protocol: wire format and sender.
//!
//! The controller tells an application pod its role (active or standby) with one UDP datagram
//! (default port 10001) and the pod answers with an ACK. The byte layout, validation rules and
//! resend policy are specified in `docs/protocol.md`; this crate is the one implementation of
//! the codec, shared by the sender ([`sender::Notifier`], used by the controller) and the
//! receiver (the `hapod-agent` crate).
//!
//! ```
//! use hapod_protocol::{decode, encode, Key, Message, Notification, Role};
//!
//! let key = Key::new(b"shared secret".to_vec()).unwrap();
//! let msg = Notification::new("default/hapod", "hapod-7f9c", Role::Active, 1 << 32 | 1);
//! let datagram = encode(&msg, Some(&key)).unwrap();
//! assert_eq!(decode(&datagram, Some(&key)).unwrap(), Message::Notify(msg));
//! ```

mod agents;
mod codec;
mod key;
mod lease;
pub mod sender;

pub use agents::{AgentReports, LeaseTerms};
pub use codec::{
    Ack, DecodeError, EncodeError, LEGACY_PAYLOAD, MAC_LEN, MAX_DATAGRAM_LEN, MAX_NAME_LEN,
    Message, Notification, PROTOCOL_VERSION, Role, decode, encode, encode_ack, unix_nanos_now,
};
pub use key::{DEMO_KEY, Key, KeyError};
pub use lease::{
    AgentRole, Grant, LEASE_PROTOCOL_VERSION, Order, Report, encode_order, encode_report,
};
