//! hapod-node: a kubelet stand-in that runs the pods bound to its Nodes as local processes.
//!
//! Each pod gets its own loopback address (127.x.y.z) as pod IP, each container its own mount
//! namespace with a private `/tmp` (host folder published as annotation
//! `node.hapod.io/tmp-<container>`) and its volumes bind-mounted; images map to local binaries.
//! Status (phase, conditions, container states, restarts) is written on every change.
//!
//! Use [`NodeHandle::spawn`] to run a node inside a test's runtime, or the `hapod-node` binary.
//!
//! Where things are: [`node`] registers the Nodes and runs one [`pod::PodWorker`] per pod;
//! [`pod`] and its submodules run a pod's containers ([`process`] starts them, [`probe`] probes
//! them, [`command`] builds their command lines, [`expand`] their environment, [`volumes`]
//! their volumes) and report their status ([`status`]); [`kubelet`] serves `kubectl logs`;
//! [`config`], [`cli`] and [`ip_allocator`] hold the settings and the pod IP range.

pub mod cli;
pub mod command;
pub mod config;
pub mod expand;
pub mod ip_allocator;
pub mod kubelet;
pub mod node;
pub mod path_error;
pub mod pod;
pub mod probe;
pub mod process;
mod retry;
pub mod status;
pub mod volumes;

pub use config::{ImageMap, NodeConfig};
pub use ip_allocator::PodCidr;
pub use node::{NodeHandle, run};
pub use pod::{LOG_ANNOTATION_PREFIX, TMP_ANNOTATION_PREFIX};
