# syntax=docker/dockerfile:1
#
# The imdsguard node daemon image (deploy/kubernetes runs it).
#
#   docker build --build-arg VERSION=$(git describe --tags --always) -t ghcr.io/imdsguard/imdsguard:dev .
#   docker buildx build --platform linux/amd64,linux/arm64 ...
#
# No clang: the compiled BPF objects (bpf/*_bpfel.o) are committed, and
# bpfel serves both amd64 and arm64.

FROM --platform=$BUILDPLATFORM golang:1.26-bookworm AS build
ARG TARGETOS=linux
ARG TARGETARCH
ARG VERSION=dev
WORKDIR /src
# Modules first: a source change does not download them again.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
# Static (CGO_ENABLED=0): the final image has no libc. -trimpath keeps build
# paths out of the binary; cross-compiled on the build host's platform. The
# flags are the Makefile's build target's (see there why grpcnotrace).
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -tags grpcnotrace -buildvcs=false -ldflags "-s -w -X main.version=${VERSION}" \
      -o /out/imdsguard ./cmd/imdsguard

# distroless/static, and not its :nonroot variant: the daemon runs as uid 0.
# It loads BPF programs, pins them under /sys/fs/bpf (owned by root, mode
# 0700 on most hosts), writes the host's nftables and enters other network
# namespaces; capabilities of a non-root user are dropped at exec unless
# made ambient, which Kubernetes cannot ask for. The image holds only the
# binary, CA certificates (syslog+tls outputs) and tzdata: no shell, no
# package manager.
# Release builds pin it by digest (…static-debian12@sha256:…).
FROM gcr.io/distroless/static-debian12:latest
COPY --from=build /out/imdsguard /usr/local/bin/imdsguard
USER 0:0
# The DaemonSet passes "run …" as args; `kubectl exec … -- imdsguard status`
# finds the binary on distroless's PATH.
ENTRYPOINT ["/usr/local/bin/imdsguard"]
CMD ["run"]
