// Package integration runs the imdsguard daemon against real clients in the
// netns lab (test/lab). Every test here needs root, cgroup v2 and BPF; it
// skips with the reason otherwise, and fails instead under CI=true.
package integration

import (
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
	os.Exit(testbin.Main(m,
		testbin.Target{Dst: &bins.imdsguard, Pkg: "github.com/imdsguard/imdsguard/cmd/imdsguard"},
		testbin.Target{Dst: &bins.labclient, Pkg: "github.com/imdsguard/imdsguard/test/labclient"},
		testbin.Target{Dst: &bins.mock, Pkg: "github.com/aws/amazon-ec2-metadata-mock/cmd/ec2-metadata-mock"},
		testbin.Target{Dst: &bins.rawclient, Pkg: "github.com/imdsguard/imdsguard/test/rawclient"},
	))
}
