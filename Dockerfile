# cairn: the `cairn` server (node, gateway) and the `cairnctl` CLI.
#
#   docker build -t cairn .
#
# The base images are build arguments; on a machine without registry
# access, deploy/images.sh builds local stand-ins under the same names.
# Plain Dockerfile syntax (no BuildKit-only features), so the classic
# builder works too.
ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
# The dependency layer: the manifests, the lock file and the protocol
# (rarely changed) with stub sources (one per target the manifests name,
# every [[bench]] included), so the dependencies are compiled once and
# cached until Cargo.toml, Cargo.lock or proto/ change.
COPY Cargo.toml Cargo.lock ./
COPY .cargo .cargo
COPY proto proto
COPY node/Cargo.toml node/Cargo.toml
COPY node/io/Cargo.toml node/io/Cargo.toml
COPY node/lsm/Cargo.toml node/lsm/Cargo.toml
COPY client/Cargo.toml client/Cargo.toml
COPY client/cairnctl/Cargo.toml client/cairnctl/Cargo.toml
COPY client/testing/Cargo.toml client/testing/Cargo.toml
COPY sim-tests/Cargo.toml sim-tests/Cargo.toml
COPY fuzz-targets/Cargo.toml fuzz-targets/Cargo.toml
RUN for c in node node/io node/lsm client client/testing sim-tests fuzz-targets; do \
      mkdir -p $c/src $c/benches && echo '//! stub' > $c/src/lib.rs; \
      for b in $(sed -n '/^\[\[bench\]\]/{n;s/^name = "\(.*\)"/\1/p}' $c/Cargo.toml); do \
        echo 'fn main() {}' > $c/benches/$b.rs; \
      done; \
    done \
 && mkdir -p node/src/bin client/cairnctl/src \
 && echo 'fn main() {}' > node/src/bin/cairn.rs \
 && echo 'fn main() {}' > client/cairnctl/src/main.rs \
 && cargo build --release --locked -p cairn-node -p cairnctl --bins \
 && rm -rf node client sim-tests fuzz-targets
# The sources; only cairn's own crates are compiled here (touched: the
# copies may be older than the stubs' build).
COPY node node
COPY client client
COPY sim-tests sim-tests
COPY fuzz-targets fuzz-targets
RUN touch node/src/lib.rs node/src/bin/cairn.rs node/io/src/lib.rs node/lsm/src/lib.rs \
      client/src/lib.rs client/cairnctl/src/main.rs \
 && cargo build --release --locked -p cairn-node -p cairnctl --bins \
 && install -D -m 0755 target/release/cairn /out/cairn \
 && install -D -m 0755 target/release/cairnctl /out/cairnctl

FROM ${RUNTIME_IMAGE}
# A fixed non-root user; data only under /var/lib/cairn (the volume), so
# the root filesystem can be mounted read-only.
RUN groupadd --system --gid 10001 cairn \
 && useradd --system --uid 10001 --gid cairn --home-dir /var/lib/cairn --shell /usr/sbin/nologin cairn \
 && mkdir -p /var/lib/cairn \
 && chown cairn:cairn /var/lib/cairn
COPY --from=builder /out/cairn /out/cairnctl /usr/local/bin/
USER 10001:10001
WORKDIR /var/lib/cairn
VOLUME ["/var/lib/cairn"]
# Node: client 7000, peer 7100, metrics 9100. The gateway uses 7000 and
# 9100 too (they run in separate containers).
ENV CAIRN_DATA_DIR=/var/lib/cairn \
    CAIRN_LISTEN_CLIENT=0.0.0.0:7000 \
    CAIRN_LISTEN_PEER=0.0.0.0:7100 \
    CAIRN_LISTEN_METRICS=0.0.0.0:9100 \
    CAIRN_GATEWAY_LISTEN=0.0.0.0:7000 \
    CAIRN_GATEWAY_LISTEN_METRICS=0.0.0.0:9100 \
    CAIRN_PROBE_ADDR=127.0.0.1:7000 \
    CAIRN_LOG_FORMAT=json
EXPOSE 7000 7100 9100
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=3 \
  CMD ["cairn", "probe", "--service", "readiness"]
ENTRYPOINT ["cairn"]
CMD ["node"]
