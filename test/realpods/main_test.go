// Package realpods runs the imdsguard daemon against pods that a real
// container runtime made (test/kubenode: containerd over CRI, runc, the CNI
// bridge) in the netns lab. Every test here needs root, cgroup v2, BPF and
// the runtime's packages; it skips with the reason otherwise, and fails
// instead under CI=true.
package realpods

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
}

var bins binaries

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "imdsguard-realpods-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := func() int {
		defer os.RemoveAll(dir)
		for _, b := range []struct {
			dst *string
			pkg string
		}{
			{&bins.imdsguard, "github.com/imdsguard/imdsguard/cmd/imdsguard"},
			{&bins.labclient, "github.com/imdsguard/imdsguard/test/labclient"},
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
