//! The project's task runner (`cargo xtask ...`): a thin command line over the test kit
//! (`tests/kit`, crate `hapod_testkit`), which holds the control plane runner, the private
//! network namespace and the testbed.

pub mod bench;
pub mod chaos;
pub mod demo;
pub mod deploy;
pub mod local;
pub mod test;

// `cargo xtask controlplane` is the kit's own `Cli` (it reads the control plane's state
// files); `test` reaches the kit as `crate::{netns, controlplane, helm, testbed}`.
pub use hapod_testkit::{controlplane, helm, netns, testbed};
pub use local::{down, shell, up};
