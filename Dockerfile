# syntax=docker/dockerfile:1
#
# The roomshard images, from one multi-stage file:
#   docker build --target node     -t roomshard-node:dev     .
#   docker build --target operator -t roomshard-operator:dev .
# A Rust builder compiles both release binaries once (cached across targets); each runtime image
# is distroless/cc (glibc and libgcc only: no shell, no package manager) running as the
# unprivileged user 65532. Checked offline by tests/deploy/test_dockerfile.py (BuildKit's own
# parser and hadolint); building it needs Docker with BuildKit.

# The builder's toolchain; the workspace needs at least its rust-version (Cargo.toml).
ARG RUST_VERSION=1.95
# Debian 12 on both sides, so the binaries link against the glibc they run with.
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
# The whole workspace is needed to resolve it (every member's manifest, the lock file).
COPY Cargo.toml Cargo.lock ./
COPY shard ./shard
COPY node ./node
# The node embeds the JavaScript client it serves at /roomshard.js.
COPY clients/js/roomshard.js ./clients/js/roomshard.js
COPY operator ./operator
# The load generator is a workspace member too (not built here, but its manifest is needed).
COPY bench ./bench
COPY testing ./testing
COPY tests/kube ./tests/kube
# The registry and target caches stay on the build machine between builds; the binaries are
# copied out of the cached target directory, which is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin roomshard-node --bin roomshard-operator \
    && mkdir -p /out \
    && cp target/release/roomshard-node target/release/roomshard-operator /out/

# The chat node: clients on 8080 (/ws, /readyz, /healthz, /metrics), peers on 7070 (/peer,
# /status). Configured by flags or ROOMSHARD_* variables, which the operator sets.
FROM ${RUNTIME_IMAGE} AS node
COPY --from=builder /out/roomshard-node /usr/local/bin/roomshard-node
USER 65532:65532
EXPOSE 8080 7070
ENTRYPOINT ["/usr/local/bin/roomshard-node"]

# The operator: `controller` reconciles ChatClusters; metrics and /healthz on 9090.
FROM ${RUNTIME_IMAGE} AS operator
COPY --from=builder /out/roomshard-operator /usr/local/bin/roomshard-operator
USER 65532:65532
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/roomshard-operator"]
CMD ["controller"]
