# sudo resets PATH; find the Go toolchain either way.
GO ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

.PHONY: all build generate check-generated vet test test-unit test-kernels bench bench-short clean

all: build

# The release build (the Dockerfile uses the same flags): -trimpath keeps
# build paths out of the binary; -s -w drops the symbol table and DWARF
# (8 MB; panics still print full stack traces from the runtime's own
# tables). grpcnotrace keeps gRPC from linking golang.org/x/net/trace, whose
# html/template and text/template make the linker keep every exported method
# of every type (4 MB); its /debug/requests pages were never served: the
# metrics server has its own mux. A plain `go build ./cmd/imdsguard` still
# works, only larger.
BUILD_FLAGS = -trimpath -tags grpcnotrace
build:
	$(GO) build $(BUILD_FLAGS) -ldflags "-s -w -X main.version=$(VERSION)" -o bin/imdsguard ./cmd/imdsguard

# Rebuild the BPF objects and their Go bindings (needs clang and llvm-strip).
generate:
	$(GO) generate ./bpf/

# Fails when the committed generated files differ from a fresh build.
check-generated: generate
	@git diff --exit-code --stat -- bpf/ || { echo "bpf/: generated files are stale: run 'make generate' and commit"; exit 1; }
	@test -z "$$(git status --porcelain --untracked-files=all -- bpf/)" || { git status --short -- bpf/; echo "bpf/: untracked generated files"; exit 1; }

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l .)" || { gofmt -l .; echo "gofmt: files above need formatting"; exit 1; }

# Every test, privileged ones included: run as root (sudo make test).
# Without root they skip with the reason; with CI=true or
# IMDSGUARD_REQUIRE_PRIVILEGED=1 a test that would skip fails instead.
test:
	$(GO) test -count=1 -v -timeout 30m ./...

# The kernel matrix (test/kernels): boots each kernel line's Debian cloud
# kernel under QEMU and runs the privileged suites inside it. Lines from 6.1
# up must pass every suite; older ones must refuse to start cleanly.
KERNELS ?= 6.1 6.12 5.10
test-kernels:
	@test "$$(id -u)" = 0 || { echo "make test-kernels needs root (apt, debootstrap, the suites' own needs): run sudo make test-kernels"; exit 1; }
	GO=$(GO) test/kernels/matrix.sh $(KERNELS)

# Unprivileged quick pass.
test-unit:
	$(GO) test -count=1 -short ./...

# Benchmarks (test/bench) in the privileged lab: `sudo make bench` runs them
# all (about 10 minutes on 2 cores) and rewrites docs/benchmarks.md, keeping
# its hand-written part (test/bench/notes.md). Not part of `make test`.
bench:
	@test "$$(id -u)" = 0 || { echo "make bench needs root (network namespaces, cgroups, BPF): run sudo make bench"; exit 1; }
	$(GO) test -count=1 -run '^$$' -bench . -benchtime 1x -timeout 45m ./test/bench/ -args -report $(CURDIR)/docs/benchmarks.md

# The same with small counts (about 70 s), for CI: the figures are only
# indicative, so it prints the report and leaves docs/benchmarks.md alone.
BENCH_SHORT_REPORT ?= $(or $(TMPDIR),/tmp)/imdsguard-bench-short.md
bench-short:
	@test "$$(id -u)" = 0 || { echo "make bench-short needs root (network namespaces, cgroups, BPF): run sudo make bench-short"; exit 1; }
	$(GO) test -count=1 -run '^$$' -bench . -benchtime 1x -timeout 15m ./test/bench/ -args -quick -report $(BENCH_SHORT_REPORT)
	@cat $(BENCH_SHORT_REPORT)

clean:
	rm -rf bin
