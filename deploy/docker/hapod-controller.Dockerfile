# syntax=docker/dockerfile:1
# hapod-controller: the controller (flags: docs/contracts.md).
# Build from the repository root:
#   docker build -f deploy/docker/hapod-controller.Dockerfile -t ghcr.io/hapod/hapod-controller:0.1.0 \
#     --build-arg HAPOD_GIT_COMMIT="$(git rev-parse HEAD)" .
# (the commit is the git_commit label of the hapod_build_info metric; without it: unknown)
# The image holds the statically linked controller and kubectl plugin, exactly what
#   cargo build --release -p hapod-controller -p kubectl-hapod --target x86_64-unknown-linux-gnu
# produces with RUSTFLAGS="-C target-feature=+crt-static"; no shell, no package manager.

FROM docker.io/library/rust:1.95-bookworm AS builder
ARG HAPOD_GIT_COMMIT=unknown
WORKDIR /src
COPY . .
ENV RUSTFLAGS="-C target-feature=+crt-static" \
    CARGO_TARGET_DIR=/src/target \
    HAPOD_GIT_COMMIT=$HAPOD_GIT_COMMIT
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --release --locked -p hapod-controller -p kubectl-hapod --target x86_64-unknown-linux-gnu \
 && install -D -m 0755 target/x86_64-unknown-linux-gnu/release/hapod-controller /out/hapod-controller \
 && install -D -m 0755 target/x86_64-unknown-linux-gnu/release/kubectl-hapod /out/kubectl-hapod

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=builder /out/hapod-controller /usr/local/bin/hapod-controller
# The kubectl plugin, for `kubectl cp` out of the image or `kubectl exec ... kubectl-hapod`.
COPY --from=builder /out/kubectl-hapod /usr/local/bin/kubectl-hapod
# 65532 = "nonroot" in distroless; numeric so that runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 8080/tcp
ENTRYPOINT ["/usr/local/bin/hapod-controller"]
