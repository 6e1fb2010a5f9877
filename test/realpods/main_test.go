// Package realpods runs the imdsguard daemon against pods that a real
// container runtime made (test/kubenode: containerd over CRI, runc, the CNI
// bridge) in the netns lab. Every test here needs root, cgroup v2, BPF and
// the runtime's packages; it skips with the reason otherwise, and fails
// instead under CI=true.
package realpods

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
}

var bins binaries

func TestMain(m *testing.M) {
	os.Exit(testbin.Main(m,
		testbin.Target{Dst: &bins.imdsguard, Pkg: "github.com/imdsguard/imdsguard/cmd/imdsguard"},
		testbin.Target{Dst: &bins.labclient, Pkg: "github.com/imdsguard/imdsguard/test/labclient"},
	))
}
