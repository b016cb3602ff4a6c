# Multi-stage: a release build, then a slim runtime with only the binary.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin opros

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /app --create-home opros
WORKDIR /app
COPY --from=build /src/target/release/opros /usr/local/bin/opros
RUN mkdir -p /app/data && chown opros:opros /app/data
USER opros
ENV HOST=0.0.0.0 PORT=8080 DATABASE_URL=sqlite://data/opros.db?mode=rwc
VOLUME ["/app/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD curl -fsS "http://127.0.0.1:${PORT}/healthz" || exit 1
ENTRYPOINT ["opros"]
CMD ["serve"]
