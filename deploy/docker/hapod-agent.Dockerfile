# syntax=docker/dockerfile:1
# hapod-agent: the notification-receiving sidecar.
# Build from the repository root:
#   docker build -f deploy/docker/hapod-agent.Dockerfile -t ghcr.io/hapod/hapod-agent:0.1.0 .
# The image holds one statically linked binary, exactly what
#   cargo build --release -p hapod-agent --target x86_64-unknown-linux-gnu
# produces with RUSTFLAGS="-C target-feature=+crt-static"; no shell, no package manager.

FROM docker.io/library/rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
ENV RUSTFLAGS="-C target-feature=+crt-static" \
    CARGO_TARGET_DIR=/src/target
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --release --locked -p hapod-agent --target x86_64-unknown-linux-gnu \
 && install -D -m 0755 target/x86_64-unknown-linux-gnu/release/hapod-agent /out/hapod-agent

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=builder /out/hapod-agent /usr/local/bin/hapod-agent
# 65532 = "nonroot" in distroless; numeric so that runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 10001/udp
ENTRYPOINT ["/usr/local/bin/hapod-agent"]
