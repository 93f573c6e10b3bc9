# slotbandit: one image for the cluster job (backfill, stream), the lookup service and the tools.
# Built on Debian bookworm; librdkafka is compiled into the binary by rdkafka-sys.
FROM rust:1.95-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake pkg-config zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
COPY schema schema
COPY datasets/banners datasets/banners
RUN cargo build --release --locked --bin slotbandit

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tzdata \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/slotbandit --create-home slotbandit
COPY --from=build /src/target/release/slotbandit /usr/local/bin/slotbandit
COPY jobs /etc/slotbandit/jobs
USER 10001
WORKDIR /var/lib/slotbandit
ENTRYPOINT ["/usr/local/bin/slotbandit"]
CMD ["--help"]
