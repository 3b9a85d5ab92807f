//! `hapod-pause`: what Kubernetes' pause image does, for the testbed's real node, whose
//! containerd cannot pull images. containerd starts it first in every pod: it holds the pod's
//! namespaces while the pod's containers come and go, reaps the orphans that a shared PID
//! namespace hands to it, and ends on SIGTERM or SIGINT.

use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};

fn main() -> nix::Result<()> {
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
        signals.add(signal);
    }
    // Blocked, the signals wait in the queue for `wait` instead of running default actions
    // (which, for PID 1 of a namespace, would ignore SIGTERM).
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&signals), None)?;
    loop {
        match signals.wait()? {
            Signal::SIGCHLD => reap(),
            _ => return Ok(()),
        }
    }
}

/// Collects every child that has ended (one SIGCHLD may stand for several).
fn reap() {
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}
