//! The real `hapod-demo` binary: crash mode and the HTTP endpoint.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hapod_protocol::sender::{Delivery, Notifier, NotifierConfig};
use hapod_protocol::{Notification, Role};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const DEMO: &str = env!("CARGO_BIN_EXE_hapod-demo");

/// Kills the child (started by this test) when the test ends, even on failure.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_exit(child: &mut Child) -> std::process::ExitStatus {
    for _ in 0..500 {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("process did not exit within 5 s");
}

#[test]
fn crash_mode_aborts_when_the_file_appears() {
    let dir = tempfile::tempdir().unwrap();
    let killme = dir.path().join("killme");
    let child = Command::new(DEMO)
        .args(["crash", "--interval-ms", "20", "--file"])
        .arg(&killme)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "alive while the file is absent"
    );
    std::fs::write(&killme, b"").unwrap();
    let status = wait_for_exit(&mut child.0);
    assert_eq!(
        status.signal(),
        Some(nix::sys::signal::Signal::SIGABRT as i32),
        "{status:?}"
    );
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` on 127.0.0.1 with an ordinary HTTP client (hyper's); returns the status code
/// and the body.
async fn get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri = format!("http://127.0.0.1:{port}{path}").parse()?;
    let exchange = async {
        let (head, body) = client.get(uri).await?.into_parts();
        let body = body.collect().await?.to_bytes();
        anyhow::Ok((head.status.as_u16(), String::from_utf8(body.to_vec())?))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange).await?
}

async fn wait_for_http(port: u16) {
    for _ in 0..500 {
        if get(port, "/readyz").await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("demo did not serve HTTP within 5 s");
}

fn serve(http_port: u16, notify_port: u16, unready: &Path) -> ChildGuard {
    let child = Command::new(DEMO)
        .arg("serve")
        .args(["--http-port", &http_port.to_string()])
        .args(["--notify-port", &notify_port.to_string()])
        .arg("--unready-file")
        .arg(unready)
        .env("POD_IP", "127.0.0.1")
        .env("POD_NAME", "demo-0")
        .env("POD_NAMESPACE", "ns")
        .env_remove("HAPOD_NOTIFY_KEY_FILE")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    ChildGuard(child)
}

#[tokio::test]
async fn readyz_follows_the_unready_file_and_root_shows_the_role() {
    let dir = tempfile::tempdir().unwrap();
    let unready = dir.path().join("unready");
    let (http_port, notify_port) = (free_tcp_port(), free_udp_port());
    let _demo = serve(http_port, notify_port, &unready);
    wait_for_http(http_port).await;

    assert_eq!(get(http_port, "/readyz").await.unwrap().0, 200);
    std::fs::write(&unready, b"").unwrap();
    assert_eq!(get(http_port, "/readyz").await.unwrap().0, 503);
    std::fs::remove_file(&unready).unwrap();
    assert_eq!(get(http_port, "/readyz").await.unwrap().0, 200);

    let before = get(http_port, "/").await.unwrap();
    assert_eq!(
        before,
        (200, "pod=demo-0 namespace=ns role=unknown epoch=0\n".into())
    );

    let msg = Notification::new("ns/hapod", "demo-0", Role::Active, 77);
    let (notifier, mut outcomes) = Notifier::bind(NotifierConfig::default()).await.unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], notify_port));
    notifier.notify(addr, msg.clone()).unwrap();
    let outcome = outcomes.recv().await.unwrap();
    assert!(
        matches!(outcome.delivery, Delivery::Acked { .. }),
        "{outcome:?}"
    );
    let after = get(http_port, "/").await.unwrap();
    assert_eq!(
        after,
        (200, "pod=demo-0 namespace=ns role=active epoch=77\n".into())
    );
    let (status, state) = get(http_port, "/state").await.unwrap();
    assert_eq!(status, 200);
    for field in [
        r#""pod":"demo-0""#,
        r#""namespace":"ns""#,
        r#""group":"ns/hapod""#,
        r#""role":"active""#,
        r#""epoch":77"#,
        &format!(r#""message_id":{}"#, msg.message_id),
        &format!(r#""sent_at_unix_nanos":{}"#, msg.sent_at_unix_nanos),
    ] {
        assert!(state.contains(field), "{field} missing in {state}");
    }
}
