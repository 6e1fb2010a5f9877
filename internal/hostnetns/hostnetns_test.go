package hostnetns

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/imdsguard/imdsguard/internal/loader"
	"github.com/imdsguard/imdsguard/internal/netnsexec"
)

func ownRecord(t *testing.T) Record {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: reads /proc/1/ns/net")
	}
	cookie, err := loader.NetnsCookie("")
	if err != nil {
		t.Fatal(err)
	}
	inode, path, err := Describe("")
	if err != nil {
		t.Fatal(err)
	}
	return Record{Cookie: cookie, Inode: inode, Path: path}
}

// The caller's own namespace is found as "" (no namespace to enter), and
// the recorded path, if any, leads to it.
func TestFindsOwnNamespace(t *testing.T) {
	r := ownRecord(t)
	self, _ := netnsexec.ID("")
	if r.Inode != self[1] {
		t.Errorf("Describe: inode %d, want %d", r.Inode, self[1])
	}
	if r.Path != "" {
		if id, err := netnsexec.ID(r.Path); err != nil || id != self {
			t.Errorf("Describe: path %q is namespace %v (%v), want %v", r.Path, id, err, self)
		}
	}
	got, err := Find(r)
	if err != nil || got != "" {
		t.Errorf("Find(own) = %q, %v; want \"\" (own)", got, err)
	}
}

// A namespace nothing visible leads to is named by inode and cookie, with
// the command that removes its table.
func TestUnreachableSaysWhereAndHow(t *testing.T) {
	r := Record{Cookie: 1 << 60, Inode: 4026539999, Path: "/run/netns/gone"}
	_, err := Find(r)
	var ue *UnreachableError
	if !errors.As(err, &ue) {
		t.Fatalf("Find = %v, want an *UnreachableError", err)
	}
	for _, want := range []string{
		fmt.Sprintf("network namespace net:[%d] (netns cookie %d)", r.Inode, r.Cookie),
		"nor /run/netns/gone",
		"nsenter --net=/proc/PID/ns/net imdsguard detach",
		"lsns -t net | grep 4026539999",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message lacks %q:\n%s", want, err)
		}
	}
}
