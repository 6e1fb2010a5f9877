// Package integration runs the imdsguard daemon against real clients in the
// netns lab (test/lab). Every test here needs root, cgroup v2 and BPF; it
// skips with the reason otherwise, and fails instead under CI=true.
package integration

import (
	"fmt"
	"os"
	"testing"

	"github.com/imdsguard/imdsguard/test/testbin"
)

// binaries built once for the whole test binary; TestMain fills it before
// any test runs and nothing writes it afterwards.
type binaries struct {
	imdsguard string
	labclient string
	mock      string // amazon-ec2-metadata-mock
	rawclient string
}

var bins binaries

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "imdsguard-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := func() int {
		defer os.RemoveAll(dir)
		// Readable by the unprivileged user a start-failure test runs as.
		if err := os.Chmod(dir, 0o755); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		for _, b := range []struct {
			dst *string
			pkg string
		}{
			{&bins.imdsguard, "github.com/imdsguard/imdsguard/cmd/imdsguard"},
			{&bins.labclient, "github.com/imdsguard/imdsguard/test/labclient"},
			{&bins.mock, "github.com/aws/amazon-ec2-metadata-mock/cmd/ec2-metadata-mock"},
			{&bins.rawclient, "github.com/imdsguard/imdsguard/test/rawclient"},
		} {
			out, err := testbin.Build(b.pkg, dir)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			*b.dst = out
		}
		return m.Run()
	}()
	os.Exit(code)
}
