// Package testbin gives tests the programs they run (the daemon, lab
// clients, mock servers): built from source with the Go toolchain on a
// developer's machine, or taken prebuilt from IMDSGUARD_TEST_BIN_DIR where
// no toolchain exists, as inside the kernel-matrix VMs (test/kernels).
package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
)

// EnvDir names the directory of prebuilt binaries, one per package, each
// named after the last element of its import path.
const EnvDir = "IMDSGUARD_TEST_BIN_DIR"

// Build returns the path of pkg's binary: dir/<name> freshly built, or the
// prebuilt one when EnvDir is set. A prebuilt binary that is missing is an
// error, not a fallback to building: the VM has no toolchain, and a test
// that ran something else would prove nothing.
func Build(pkg, dir string) (string, error) {
	name := path.Base(pkg)
	if pre := os.Getenv(EnvDir); pre != "" {
		p := filepath.Join(pre, name)
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("prebuilt %s (%s=%s): %w", pkg, EnvDir, pre, err)
		}
		return p, nil
	}
	out := filepath.Join(dir, name)
	// The shipped build's flags (the Makefile's build target, the
	// Dockerfile): tests and benchmarks run what users run.
	cmd := exec.Command(goTool(), "build", "-trimpath", "-tags", "grpcnotrace", "-ldflags", "-s -w", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building %s: %w\n%s", pkg, err, msg)
	}
	return out, nil
}

// goTool finds the go command: on PATH, else in the GOROOT the test was
// built with (sudo resets PATH).
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

// Target is a package whose binary a test binary needs, and where its
// path goes.
type Target struct {
	Dst *string
	Pkg string
}

// Main builds targets into a temporary directory (readable by every user:
// some tests run a binary as an unprivileged one), runs the tests and
// removes the directory; it returns the exit code for os.Exit.
func Main(m interface{ Run() int }, targets ...Target) int {
	dir, err := os.MkdirTemp("", "imdsguard-bins-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for _, t := range targets {
		out, err := Build(t.Pkg, dir)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		*t.Dst = out
	}
	return m.Run()
}
