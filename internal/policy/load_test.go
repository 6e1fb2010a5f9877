package policy

import (
	"github.com/imdsguard/imdsguard/internal/cloud"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Only a regular file of bounded size is read as a policy; anything else
// fails at once with the reason, never blocks (a FIFO would block open()).
func TestLoadRefusesWhatIsNotABoundedRegularFile(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big.yaml")
	if err := os.WriteFile(big, make([]byte, MaxFileBytes+1), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ path, want string }{
		{fifo, "is not a regular file"},
		{dir, "is not a regular file"},
		{"/dev/zero", "is not a regular file"},
		{big, "more than the 1048576 a policy may have"},
		{filepath.Join(dir, "missing.yaml"), "no such file"},
	} {
		done := make(chan error, 1)
		go func() { _, err := Load(tt.path, cloud.AWS); done <- err }()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "reading policy: ") {
				t.Errorf("Load(%s) = %v, want reading policy: …%s…", tt.path, err, tt.want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("Load(%s) blocked", tt.path)
		}
	}
}
