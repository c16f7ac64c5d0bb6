# syntax=docker/dockerfile:1
# One image for every component: the subcommand picks it (`up`, `edge`,
# `ratelimit`, `dedup`, `storm`, `crd-writer`). Build from the repository root:
#   docker build -t breakwater:dev .

# Build: the locked release binary. protoc is vendored (crates/proto), so the
# Rust image needs nothing else. The toolchain is the workspace's MSRV or later.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# The cargo registry and target directory are caches of the builder only.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p breakwater \
    && install -D -m 0755 target/release/breakwater /out/breakwater

# Run: distroless with glibc and libgcc (all the binary links), no shell, no
# package manager. Runs as uid 65532 and writes nothing outside its mounted
# volumes, so it runs with readOnlyRootFilesystem.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/breakwater /usr/local/bin/breakwater
USER 65532:65532
# The edge's HTTP port, the gRPC ports of the components, a component's metrics port.
EXPOSE 8080 9101 9102 9103 9104 9090
ENTRYPOINT ["/usr/local/bin/breakwater"]
CMD ["--help"]
