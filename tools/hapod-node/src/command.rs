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
/// entrypoint path); another program of the image when named by an absolute path that does not
/// exist on the host but a file of that name lies next to the image's binary (the controller
/// image's `/usr/local/bin/kubectl-hapod`, run by the Helm chart's test Pod); any other
/// absolute path as is; anything else through the container's PATH.
pub fn resolve_program(name: &str, binary: &Path) -> PathBuf {
    let named = Path::new(name);
    if !named.exists() {
        if named.file_name() == binary.file_name() {
            return binary.to_path_buf();
        }
        if let (true, Some(file), Some(dir)) =
            (named.is_absolute(), named.file_name(), binary.parent())
            && dir.join(file).is_file()
        {
            return dir.join(file);
        }
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

    #[test]
    fn other_programs_of_the_image() {
        let dir = std::env::temp_dir().join(format!("hapod-node-programs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (bin, plugin) = (dir.join("hapod-controller"), dir.join("kubectl-hapod"));
        std::fs::write(&bin, "").unwrap();
        std::fs::write(&plugin, "").unwrap();
        // The image's path of a program next to the mapped binary: that program.
        assert_eq!(
            resolve_program("/usr/local/bin/kubectl-hapod", &bin),
            plugin
        );
        // No such program in the image: the path as is (the start fails like a runtime's).
        assert_eq!(
            resolve_program("/usr/local/bin/kubectl-other", &bin),
            Path::new("/usr/local/bin/kubectl-other")
        );
        // A bare name still goes through PATH.
        assert_eq!(
            resolve_program("kubectl-hapod", &bin),
            Path::new("kubectl-hapod")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
