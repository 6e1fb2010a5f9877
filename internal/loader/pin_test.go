package loader

import (
	"path/filepath"
	"testing"

	"github.com/imdsguard/imdsguard/test/lab"
)

func TestRemovingNothingIsNotAnError(t *testing.T) {
	dir := lab.PrivateBPFFS(t)
	removed, err := RemovePinned(filepath.Join(dir, "imdsguard"), nil)
	if err != nil || len(removed) != 0 {
		t.Errorf("RemovePinned of a missing directory: %v, %v", removed, err)
	}
	st, err := ReadStatus(filepath.Join(dir, "imdsguard"))
	if err != nil || st.Pinned || st.Daemon.Running {
		t.Errorf("status of a missing directory: %+v, %v", st, err)
	}
}
