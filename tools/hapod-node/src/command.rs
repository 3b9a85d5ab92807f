//! A container's command line: what the kubelet would run for `command` and `args`, and how a
//! program name is resolved. Shared by container starts (`pod`) and exec probes (`probe`), which
//! is why it lives apart from both.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Container;

use crate::expand::expand;

/// The command line the kubelet would run: `command` replaces the image's entrypoint (the
/// mapped binary), `args` follow; both are `$(VAR)`-expanded with the container's env.
pub fn command_line(
    container: &Container,
    binary: &Path,
    env: &[(String, String)],
) -> (PathBuf, Vec<String>) {
    let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let args: Vec<String> = container
        .args
        .iter()
        .flatten()
        .map(|a| expand(a, lookup))
        .collect();
    match container.command.as_deref() {
        Some([first, rest @ ..]) => {
            let first = expand(first, lookup);
            let mut all: Vec<String> = rest.iter().map(|a| expand(a, lookup)).collect();
            all.extend(args);
            (resolve_program(&first, binary), all)
        }
        _ => (binary.to_path_buf(), args),
    }
}

/// A command's program: the image's binary when named by its file name (or as the image's
/// entrypoint path), an absolute path as is, anything else through the container's PATH.
pub fn resolve_program(name: &str, binary: &Path) -> PathBuf {
    let named = Path::new(name);
    if named.file_name() == binary.file_name() && !named.exists() {
        return binary.to_path_buf();
    }
    named.to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_and_args() {
        let env = vec![("POD_IP".to_string(), "127.10.0.9".to_string())];
        let bin = Path::new("/opt/bin/hapod-demo");
        let c = Container {
            args: Some(vec!["serve".into(), "--listen=$(POD_IP):8080".into()]),
            ..Default::default()
        };
        assert_eq!(
            command_line(&c, bin, &env),
            (
                bin.to_path_buf(),
                vec!["serve".to_string(), "--listen=127.10.0.9:8080".to_string()]
            )
        );
        let c = Container {
            command: Some(vec!["hapod-demo".into(), "crash".into()]),
            args: Some(vec!["--file".into(), "/tmp/killme".into()]),
            ..Default::default()
        };
        let (p, a) = command_line(&c, bin, &env);
        assert_eq!(p, bin);
        assert_eq!(a, ["crash", "--file", "/tmp/killme"]);
        let c = Container {
            command: Some(vec!["/bin/sh".into(), "-c".into(), "echo $(POD_IP)".into()]),
            ..Default::default()
        };
        let (p, a) = command_line(&c, bin, &env);
        assert_eq!(p, Path::new("/bin/sh"));
        assert_eq!(a, ["-c", "echo 127.10.0.9"]);
        assert_eq!(
            resolve_program("sleep", Path::new("/bin/sleep")),
            Path::new("/bin/sleep")
        );
        assert_eq!(
            resolve_program("cat", Path::new("/bin/sleep")),
            Path::new("cat")
        );
    }
}
