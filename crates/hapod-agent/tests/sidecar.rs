//! The sidecar's role file and hook, driven by real notifications on loopback.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hapod_agent::sidecar::{Hook, Sidecar};
use hapod_agent::{Agent, AgentConfig};
use hapod_protocol::sender::{Delivery, Notifier, NotifierConfig};
use hapod_protocol::{Notification, Role};

/// Polls until `path` holds `lines` lines (bounded: 10 s).
async fn wait_for_lines(path: &Path, lines: usize) -> Vec<String> {
    for _ in 0..1000 {
        let content = std::fs::read_to_string(path).unwrap_or_default();
        if content.lines().count() >= lines {
            return content.lines().map(str::to_owned).collect();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} never reached {lines} lines", path.display());
}

#[tokio::test]
async fn hook_sees_every_change_in_order_and_role_file_follows() {
    let dir = tempfile::tempdir().unwrap();
    let calls = dir.path().join("calls");
    let role_file = dir.path().join("run/role");
    let agent = Arc::new(
        Agent::bind(AgentConfig::new("127.0.0.1:0".parse().unwrap(), "pod-0"))
            .await
            .unwrap(),
    );
    let addr = agent.local_addr();
    let sidecar = Sidecar {
        role_file: role_file.clone(),
        hook: Some(Hook {
            // The role file is already written when the hook runs.
            command: format!(
                r#"echo "$HAPOD_PREVIOUS_ROLE $HAPOD_ROLE $HAPOD_EPOCH $HAPOD_GROUP $(cat '{}')" >> '{}'"#,
                role_file.display(),
                calls.display()
            ),
            timeout: Duration::from_secs(10),
        }),
    };
    let sidecar_task = tokio::spawn({
        let agent = agent.clone();
        async move { sidecar.run(&agent).await }
    });
    // The sidecar writes the initial role at start.
    for _ in 0..1000 {
        if role_file.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(std::fs::read_to_string(&role_file).unwrap(), "unknown\n");

    let (notifier, mut outcomes) = Notifier::bind(NotifierConfig::default()).await.unwrap();
    let roles = [Role::Active, Role::Standby, Role::Active, Role::Standby];
    for (epoch, role) in (1..).zip(roles) {
        // Each is acknowledged before the next is sent, so none supersedes another.
        notifier
            .notify(addr, Notification::new("grp", "pod-0", role, epoch))
            .unwrap();
        let outcome = outcomes.recv().await.unwrap();
        assert!(
            matches!(outcome.delivery, Delivery::Acked { .. }),
            "{outcome:?}"
        );
    }
    let lines = wait_for_lines(&calls, roles.len()).await;
    assert_eq!(
        lines,
        [
            "unknown active 1 grp active",
            "active standby 2 grp standby",
            "standby active 3 grp active",
            "active standby 4 grp standby",
        ]
    );
    assert_eq!(std::fs::read_to_string(&role_file).unwrap(), "standby\n");
    sidecar_task.abort();
}

#[tokio::test]
async fn relinquishing_on_shutdown_announces_standby_and_refuses_active_again() {
    let dir = tempfile::tempdir().unwrap();
    let calls = dir.path().join("calls");
    let role_file = dir.path().join("role");
    let agent = Agent::bind(AgentConfig::new("127.0.0.1:0".parse().unwrap(), "pod-0"))
        .await
        .unwrap();
    let sidecar = Sidecar {
        role_file: role_file.clone(),
        hook: Some(Hook {
            command: format!(
                r#"echo "$HAPOD_PREVIOUS_ROLE $HAPOD_ROLE" >> '{}'"#,
                calls.display()
            ),
            timeout: Duration::from_secs(10),
        }),
    };
    let (notifier, mut outcomes) = Notifier::bind(NotifierConfig::default()).await.unwrap();
    let notify = |role, epoch| {
        notifier
            .notify(
                agent.local_addr(),
                Notification::new("grp", "pod-0", role, epoch),
            )
            .unwrap();
    };
    notify(Role::Active, 1);
    outcomes.recv().await.unwrap();
    assert_eq!(agent.state().borrow().role, Some(Role::Active));

    sidecar.relinquish(&agent).await.unwrap();
    assert_eq!(std::fs::read_to_string(&role_file).unwrap(), "standby\n");
    assert_eq!(wait_for_lines(&calls, 1).await, ["active standby"]);
    // A notification still in flight cannot make the departing pod active again.
    notify(Role::Active, 2);
    outcomes.recv().await.unwrap();
    assert_eq!(agent.state().borrow().role, Some(Role::Standby));
}

/// Kills the sidecar process started by the test when the test ends.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn sidecar_binary_reads_its_flags_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let role_file = dir.path().join("role");
    let calls = dir.path().join("calls");
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, b"sidecar key\n").unwrap();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_hapod-agent"))
        .env("POD_IP", "127.0.0.1")
        .env("POD_NAME", "pod-1")
        .env("HAPOD_NOTIFY_PORT", port.to_string())
        .env("HAPOD_NOTIFY_KEY_FILE", &key_file)
        .env("HAPOD_ROLE_FILE", &role_file)
        .env(
            "HAPOD_HOOK",
            format!(
                r#"echo "$HAPOD_ROLE $HAPOD_EPOCH" >> '{}'"#,
                calls.display()
            ),
        )
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _child = ChildGuard(child);
    let (notifier, mut outcomes) = Notifier::bind(NotifierConfig {
        key: Some(hapod_protocol::Key::new(b"sidecar key").unwrap()),
        deadline: Duration::from_secs(5),
        ..NotifierConfig::default()
    })
    .await
    .unwrap();
    // Resends cover the time the process needs to bind.
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    notifier
        .notify(addr, Notification::new("grp", "pod-1", Role::Active, 9))
        .unwrap();
    let outcome = outcomes.recv().await.unwrap();
    assert!(
        matches!(outcome.delivery, Delivery::Acked { .. }),
        "{outcome:?}"
    );
    assert_eq!(wait_for_lines(&calls, 1).await, ["active 9"]);
    assert_eq!(std::fs::read_to_string(&role_file).unwrap(), "active\n");
}
