//! Runtime of the hapod controller: watches pods, keeps one worker per group around the pure
//! core (`hapod_core`), carries out its writes (fenced by the election), sends notifications
//! (`hapod_protocol`), writes the EndpointSlices of the groups that ask for it and exposes
//! metrics. The binary `hapod-controller` wires it up.

pub mod args;
pub mod client;
pub mod endpoints;
pub mod metrics;
pub mod orders;
pub mod podview;
pub mod router;
pub mod runtime;
pub mod worker;
pub mod writer;
