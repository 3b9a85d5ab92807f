//! Node configuration and the image-to-binary map.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::ip_allocator::PodCidr;

/// Maps container images to local binaries. An entry's key is an image reference (a tag or
/// digest on either side is ignored) or just the image's last path segment (`hapod-demo`
/// matches `ghcr.io/hapod/hapod-demo:0.1.0`, as docs/contracts.md says); a binary directory
/// resolves an image to `<dir>/<last path segment>` when that file exists.
#[derive(Debug, Clone, Default)]
pub struct ImageMap {
    entries: Vec<(String, PathBuf)>,
    dirs: Vec<PathBuf>,
}

/// Why an image has no binary, or an `--image` entry does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageMapError {
    #[error("{0}: expected IMAGE=PATH")]
    MalformedEntry(String),
    #[error("image {image} is mapped to {}, which is not an existing file", path.display())]
    NotAFile { image: String, path: PathBuf },
    #[error(
        "no binary mapped for image {image}: start hapod-node with --image {bare}=/path/to/binary \
         (or --image {segment}=..., or --bin-dir DIR containing {segment})"
    )]
    NotMapped {
        image: String,
        bare: String,
        segment: String,
    },
}

/// `registry/path/name:tag@digest` without tag and digest. A `:` before the last `/` belongs to
/// a registry port, not a tag.
fn strip_tag(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].find(':') {
        Some(colon) => &image[..last_slash + colon],
        None => image,
    }
}

fn last_segment(image: &str) -> &str {
    let image = strip_tag(image);
    image.rsplit('/').next().unwrap_or(image)
}

impl ImageMap {
    pub fn insert(&mut self, image: impl Into<String>, binary: impl Into<PathBuf>) {
        self.entries.push((image.into(), binary.into()));
    }

    pub fn add_dir(&mut self, dir: impl Into<PathBuf>) {
        self.dirs.push(dir.into());
    }

    /// Parses `IMAGE=PATH` (the `--image` flag).
    pub fn parse_entry(s: &str) -> Result<(String, PathBuf), ImageMapError> {
        let malformed = || ImageMapError::MalformedEntry(s.to_string());
        let (image, path) = s.split_once('=').ok_or_else(malformed)?;
        if image.is_empty() || path.is_empty() {
            return Err(malformed());
        }
        Ok((image.to_string(), PathBuf::from(path)))
    }

    /// The binary for an image: exact reference first, then without tag, then by last path
    /// segment, then the binary directories.
    pub fn resolve(&self, image: &str) -> Result<PathBuf, ImageMapError> {
        let bare = strip_tag(image);
        let segment = last_segment(image);
        let found = self
            .entries
            .iter()
            .find(|(k, _)| k == image)
            .or_else(|| self.entries.iter().find(|(k, _)| strip_tag(k) == bare))
            .or_else(|| {
                self.entries
                    .iter()
                    .find(|(k, _)| !k.contains('/') && strip_tag(k) == segment)
            })
            .map(|(_, p)| p.clone())
            .or_else(|| {
                self.dirs
                    .iter()
                    .map(|d| d.join(segment))
                    .find(|p| p.is_file())
            });
        match found {
            Some(p) if p.is_file() => Ok(p),
            Some(path) => Err(ImageMapError::NotAFile {
                image: image.to_string(),
                path,
            }),
            None => Err(ImageMapError::NotMapped {
                image: image.to_string(),
                bare: bare.to_string(),
                segment: segment.to_string(),
            }),
        }
    }
}

/// Everything a node process needs besides its API client.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_names: Vec<String>,
    pub images: ImageMap,
    pub pod_cidr: PodCidr,
    /// Per-pod folders (volumes, private /tmp of each container, logs) live below this.
    pub state_dir: PathBuf,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Probe periods and initial delays are multiplied by this (1.0 = the spec's values).
    pub probe_period_scale: f64,
    /// Node lease renewal and status heartbeat interval.
    pub heartbeat: Duration,
    /// A container's own exit is seen at the node's next relist, on one clock for the whole
    /// node with this period, as the kubelet's PLEG relists every second; zero = at once.
    /// Stops the node makes itself (deletion, failed liveness probe) are seen at once, as the
    /// kubelet waits for them.
    pub relist_period: Duration,
    pub lease_duration_seconds: i32,
    pub cpu: String,
    pub memory: String,
    pub max_pods: u32,
    pub node_labels: Vec<(String, String)>,
    /// Added to every container's environment unless the container sets the variable.
    pub container_env: Vec<(String, String)>,
    /// Port of the kubelet endpoint on 127.0.0.1 (`kubectl logs`; exec reported as
    /// unsupported); 0 = none.
    pub kubelet_port: u16,
}

impl NodeConfig {
    pub fn new(node_names: Vec<String>, state_dir: impl AsRef<Path>) -> Self {
        Self {
            node_names,
            images: ImageMap::default(),
            pod_cidr: PodCidr::DEFAULT,
            state_dir: state_dir.as_ref().to_path_buf(),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            probe_period_scale: 1.0,
            heartbeat: Duration::from_secs(10),
            relist_period: Duration::from_secs(1),
            lease_duration_seconds: 40,
            cpu: "4".into(),
            memory: "8Gi".into(),
            max_pods: 110,
            node_labels: Vec::new(),
            container_env: Vec::new(),
            kubelet_port: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_segments() {
        assert_eq!(
            strip_tag("ghcr.io/hapod/hapod-demo:0.1.0"),
            "ghcr.io/hapod/hapod-demo"
        );
        assert_eq!(strip_tag("localhost:5000/x/y"), "localhost:5000/x/y");
        assert_eq!(
            strip_tag("localhost:5000/x/y:1@sha256:ab"),
            "localhost:5000/x/y"
        );
        assert_eq!(last_segment("ghcr.io/hapod/hapod-demo:0.1.0"), "hapod-demo");
        assert_eq!(last_segment("busybox"), "busybox");
    }

    #[test]
    fn resolution_order_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("hapod-demo");
        std::fs::write(&bin, b"").unwrap();
        let other = dir.path().join("other");
        std::fs::write(&other, b"").unwrap();

        let mut map = ImageMap::default();
        map.insert("ghcr.io/hapod/hapod-demo", &bin);
        map.insert("agent", &other);
        assert_eq!(map.resolve("ghcr.io/hapod/hapod-demo:0.1.0").unwrap(), bin);
        assert_eq!(map.resolve("example.org/x/agent:2").unwrap(), other);
        let err = map
            .resolve("ghcr.io/hapod/hapod-controller:0.1.0")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no binary mapped for image ghcr.io/hapod/hapod-controller:0.1.0"),
            "{err}"
        );

        map.add_dir(dir.path());
        std::fs::write(dir.path().join("hapod-controller"), b"").unwrap();
        assert_eq!(
            map.resolve("ghcr.io/hapod/hapod-controller:0.1.0").unwrap(),
            dir.path().join("hapod-controller")
        );

        map.insert("missing", dir.path().join("nope"));
        assert!(
            map.resolve("missing:1")
                .unwrap_err()
                .to_string()
                .contains("not an existing file")
        );
        assert!(ImageMap::parse_entry("a=b").is_ok());
        assert!(ImageMap::parse_entry("a").is_err());
    }
}
