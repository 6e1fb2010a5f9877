// Package systemd checks the systemd packaging in deploy/systemd: that
// systemd accepts the unit, that it keeps the properties the daemon and the
// docs rely on, and (as root, in the netns lab) that the daemon enforces
// with exactly the unit's capabilities under its file-system sandbox, and
// what breaks without each capability.
package systemd

import (
	"os"
	"sync"
	"testing"

	"github.com/imdsguard/imdsguard/test/testbin"
)

// unitPath is the unit under test, relative to this package.
const unitPath = "../../deploy/systemd/imdsguard.service"

// binaries are built once per test binary, on first use: the unit-file
// checks need only the daemon, the privileged ones all three.
type binaries struct {
	imdsguard string
	labclient string
	unitexec  string
}

var (
	buildOnce sync.Once
	bins      binaries
	buildErr  error
	buildDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// build returns the built binaries, building them on the first call.
func build(t testing.TB) binaries {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "imdsguard-systemd-")
		if buildErr != nil {
			return
		}
		// The daemon runs as root without CAP_DAC_OVERRIDE: keep the
		// directory traversable and the binaries executable by anyone.
		if buildErr = os.Chmod(buildDir, 0o755); buildErr != nil {
			return
		}
		for _, b := range []struct {
			dst *string
			pkg string
		}{
			{&bins.imdsguard, "github.com/imdsguard/imdsguard/cmd/imdsguard"},
			{&bins.labclient, "github.com/imdsguard/imdsguard/test/labclient"},
			{&bins.unitexec, "github.com/imdsguard/imdsguard/test/systemd/unitexec"},
		} {
			*b.dst, buildErr = testbin.Build(b.pkg, buildDir)
			if buildErr != nil {
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return bins
}
