//! The project's task runner (`cargo xtask ...`) as a library, so that tests and other tools
//! can start the same control plane the commands do.

pub mod bench;
pub mod controlplane;
pub mod demo;
pub mod deploy;
pub mod helm;
pub mod netns;
pub mod test;
pub mod testbed;
