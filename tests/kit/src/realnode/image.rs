//! hapod's images as OCI image archives, built without a container engine: the final stage of
//! each `deploy/docker/<image>.Dockerfile` (what it copies, its user, ports and entrypoint)
//! applied to the testbed's binaries, in one uncompressed layer over a minimal root (the
//! `nonroot` user and `/tmp` of the distroless base the Dockerfiles name). The binaries of a
//! testbed build link glibc dynamically (the Dockerfiles build them with `crt-static`), so
//! the layer also carries the shared libraries `ldd` names.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::workspace_root;

/// The image reference the manifests of `deploy/` use for `name` (like `hapod-demo`).
pub fn reference(name: &str) -> String {
    format!("ghcr.io/hapod/{name}:{}", env!("CARGO_PKG_VERSION"))
}

/// What the final stage of a Dockerfile makes of the build's binaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// (binary name in the build output, absolute path in the image)
    pub copies: Vec<(String, String)>,
    pub user: Option<String>,
    pub exposed: Vec<String>,
    pub entrypoint: Vec<String>,
}

/// Reads the final stage of a Dockerfile. Only what hapod's Dockerfiles use is understood
/// (`COPY --from=builder /out/<binary> <path>`, `USER`, `EXPOSE`, `ENTRYPOINT [json]`); any other
/// instruction there is an error rather than an image that differs from the Dockerfile's.
pub fn parse_final_stage(dockerfile: &str) -> Result<Stage> {
    let lines: Vec<&str> = dockerfile.lines().collect();
    let start = lines
        .iter()
        .rposition(|line| line.trim_start().starts_with("FROM "))
        .context("no FROM line")?;
    let mut stage = Stage {
        copies: vec![],
        user: None,
        exposed: vec![],
        entrypoint: vec![],
    };
    for line in &lines[start + 1..] {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (instruction, rest) = line.split_once(' ').unwrap_or((line, ""));
        let words: Vec<&str> = rest.split_whitespace().collect();
        match (instruction, &words[..]) {
            ("COPY", &["--from=builder", from, to]) => {
                let binary = from
                    .strip_prefix("/out/")
                    .with_context(|| format!("COPY from outside /out/: {line}"))?;
                ensure!(to.starts_with('/'), "COPY to a relative path: {line}");
                stage.copies.push((binary.to_owned(), to.to_owned()));
            }
            ("USER", &[user]) => stage.user = Some(user.to_owned()),
            ("EXPOSE", ports) => stage.exposed.extend(ports.iter().map(|p| p.to_string())),
            ("ENTRYPOINT", _) => {
                stage.entrypoint = serde_json::from_str(rest)
                    .with_context(|| format!("ENTRYPOINT is not a JSON list: {line}"))?;
            }
            _ => bail!("instruction not understood in the final stage: {line}"),
        }
    }
    ensure!(!stage.copies.is_empty(), "the final stage copies nothing");
    Ok(stage)
}

/// One file or folder of the layer.
enum Entry {
    Dir { mode: u32 },
    File { bytes: Vec<u8>, mode: u32 },
}

/// The root of the distroless `nonroot` base: users, groups, `/tmp`, the home folder.
fn base_root() -> BTreeMap<String, Entry> {
    let mut root = BTreeMap::new();
    for (dir, mode) in [
        ("etc", 0o755),
        ("home", 0o755),
        ("home/nonroot", 0o700),
        ("tmp", 0o1777),
        ("usr", 0o755),
        ("usr/local", 0o755),
        ("usr/local/bin", 0o755),
    ] {
        root.insert(dir.to_owned(), Entry::Dir { mode });
    }
    let text = |s: &str| Entry::File {
        bytes: s.as_bytes().to_vec(),
        mode: 0o644,
    };
    root.insert(
        "etc/passwd".into(),
        text(
            "root:x:0:0:root:/root:/sbin/nologin\n\
             nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n\
             nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
        ),
    );
    root.insert(
        "etc/group".into(),
        text("root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n"),
    );
    root
}

/// Adds `path` (absolute) and its parent folders.
fn insert_file(root: &mut BTreeMap<String, Entry>, path: &str, bytes: Vec<u8>, mode: u32) {
    let relative = path.trim_start_matches('/');
    let mut parent = Path::new(relative).parent();
    while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
        root.entry(dir.to_string_lossy().into_owned())
            .or_insert(Entry::Dir { mode: 0o755 });
        parent = dir.parent();
    }
    root.insert(relative.to_owned(), Entry::File { bytes, mode });
}

/// The shared libraries a dynamically linked binary loads, as `ldd` resolves them.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("not a dynamic executable") || text.contains("statically linked") {
        return Ok(vec![]);
    }
    ensure!(out.status.success(), "ldd {} failed", binary.display());
    Ok(text
        .lines()
        .filter_map(|line| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file.
            let path = line.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// The binary without its debug sections (the testbed's builds carry them; an image does
/// not need them).
fn stripped(binary: &Path, scratch: &Path) -> Result<Vec<u8>> {
    let out = scratch.join(binary.file_name().context("binary without a name")?);
    let status = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(binary)
        .arg(&out)
        .status()
        .context("running objcopy (binutils)")?;
    ensure!(
        status.success(),
        "objcopy --strip-debug {} failed",
        binary.display()
    );
    fs::read(&out).with_context(|| format!("reading {}", out.display()))
}

fn layer_tar(root: &BTreeMap<String, Entry>) -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    // BTreeMap order puts every folder before what it holds.
    for (path, entry) in root {
        let mut header = tar::Header::new_ustar();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        match entry {
            Entry::Dir { mode } => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(*mode);
                header.set_size(0);
                tar.append_data(&mut header, format!("{path}/"), std::io::empty())?;
            }
            Entry::File { bytes, mode } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(bytes.len() as u64);
                tar.append_data(&mut header, path, bytes.as_slice())?;
            }
        }
    }
    Ok(tar.into_inner()?)
}

fn digest(bytes: &[u8]) -> String {
    let hash: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hash}")
}

/// The final stage of `deploy/docker/<name>.Dockerfile`.
pub fn dockerfile_stage(name: &str) -> Result<Stage> {
    let dockerfile = workspace_root().join(format!("deploy/docker/{name}.Dockerfile"));
    let text = fs::read_to_string(&dockerfile)
        .with_context(|| format!("reading {}", dockerfile.display()))?;
    parse_final_stage(&text).with_context(|| format!("in {}", dockerfile.display()))
}

/// Writes the OCI image archive `reference` (`stage` over the binaries in `bin_dir`) to `out`.
/// `ctr images import` takes it.
pub fn write_archive(reference: &str, stage: &Stage, bin_dir: &Path, out: &Path) -> Result<()> {
    let scratch = tempfile::tempdir()?;
    let mut root = base_root();
    for (binary, to) in &stage.copies {
        let path = bin_dir.join(binary);
        for library in shared_libraries(&path)? {
            let bytes =
                fs::read(&library).with_context(|| format!("reading {}", library.display()))?;
            insert_file(&mut root, &library.to_string_lossy(), bytes, 0o755);
        }
        insert_file(&mut root, to, stripped(&path, scratch.path())?, 0o755);
    }
    let layer = layer_tar(&root)?;
    let layer_digest = digest(&layer);
    let exposed: serde_json::Map<String, serde_json::Value> = stage
        .exposed
        .iter()
        .map(|port| (port.clone(), json!({})))
        .collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": stage.user,
            "ExposedPorts": exposed,
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Entrypoint": stage.entrypoint,
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created_by": "hapod testbed"}],
    }))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": digest(&config),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer.len(),
        }],
    }))?;
    let tag = reference.rsplit(':').next().unwrap_or_default();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(&manifest),
            "size": manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {
                "io.containerd.image.name": reference,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    }))?;

    let mut archive = tar::Builder::new(
        fs::File::create(out).with_context(|| format!("creating {}", out.display()))?,
    );
    let mut add = |path: &str, bytes: &[u8]| -> Result<()> {
        let mut header = tar::Header::new_ustar();
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_size(bytes.len() as u64);
        archive.append_data(&mut header, path, bytes)?;
        Ok(())
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    add("index.json", &index)?;
    for blob in [&manifest, &config, &layer] {
        let hex = digest(blob);
        add(
            &format!("blobs/sha256/{}", hex.trim_start_matches("sha256:")),
            blob,
        )?;
    }
    archive.into_inner()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_final_stage_of_every_shipped_dockerfile_is_understood() {
        for name in crate::testbed::IMAGES {
            let stage = dockerfile_stage(name).unwrap();
            assert_eq!(stage.user.as_deref(), Some("65532:65532"), "{name}");
            assert_eq!(
                stage.entrypoint,
                [format!("/usr/local/bin/{name}")],
                "{name}"
            );
            assert!(
                stage.copies.iter().any(|(binary, _)| binary == name),
                "{name}"
            );
        }
    }

    #[test]
    fn an_instruction_the_image_would_miss_is_an_error() {
        let dockerfile = "FROM a AS builder\nRUN make\nFROM b\nCOPY --from=builder /out/x /x\n\
                          RUN chmod 0 /x\nENTRYPOINT [\"/x\"]\n";
        let error = parse_final_stage(dockerfile).unwrap_err().to_string();
        assert!(error.contains("RUN chmod"), "{error}");
        let stage =
            parse_final_stage("FROM b\nCOPY --from=builder /out/x /bin/x\nEXPOSE 1/udp 2\n")
                .unwrap();
        assert_eq!(stage.copies, [("x".to_owned(), "/bin/x".to_owned())]);
        assert_eq!(stage.exposed, ["1/udp", "2"]);
    }

    #[test]
    fn the_layer_holds_the_binary_its_libraries_and_the_nonroot_user() {
        let bin_dir = tempfile::tempdir().unwrap();
        // Any dynamically linked binary of the machine stands in for a testbed build.
        fs::copy("/bin/true", bin_dir.path().join("hapod-agent")).unwrap();
        let out = bin_dir.path().join("image.tar");
        let stage = dockerfile_stage("hapod-agent").unwrap();
        write_archive(&reference("hapod-agent"), &stage, bin_dir.path(), &out).unwrap();
        let mut archive = tar::Archive::new(fs::File::open(&out).unwrap());
        let mut blobs = BTreeMap::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mut bytes = vec![];
            std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
            blobs.insert(path, bytes);
        }
        let index: serde_json::Value = serde_json::from_slice(&blobs["index.json"]).unwrap();
        let blob = |digest: &serde_json::Value| {
            let hex = digest.as_str().unwrap().trim_start_matches("sha256:");
            let bytes = &blobs[&format!("blobs/sha256/{hex}")];
            assert_eq!(super::digest(bytes), digest.as_str().unwrap());
            bytes.clone()
        };
        assert_eq!(
            index["manifests"][0]["annotations"]["io.containerd.image.name"],
            reference("hapod-agent")
        );
        let manifest: serde_json::Value =
            serde_json::from_slice(&blob(&index["manifests"][0]["digest"])).unwrap();
        let config: serde_json::Value =
            serde_json::from_slice(&blob(&manifest["config"]["digest"])).unwrap();
        assert_eq!(config["config"]["User"], "65532:65532");
        let layer = blob(&manifest["layers"][0]["digest"]);
        let mut files = vec![];
        for entry in tar::Archive::new(layer.as_slice()).entries().unwrap() {
            files.push(
                entry
                    .unwrap()
                    .path()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
        assert!(
            files.contains(&"usr/local/bin/hapod-agent".to_owned()),
            "{files:?}"
        );
        assert!(files.iter().any(|f| f.ends_with("libc.so.6")), "{files:?}");
        assert!(files.contains(&"etc/passwd".to_owned()));
        assert!(files.contains(&"tmp/".to_owned()), "{files:?}");
    }
}
