// Package hostnetns records the network namespace that holds the daemon's
// nftables table and uplink filters, and finds it again from wherever
// `imdsguard detach` or `status` runs: a shell entered with nsenter, or a
// privileged pod without hostNetwork, is in another namespace, and looking
// in its own would silently miss the table.
//
// The record is the namespace's cookie (SO_NETNS_COOKIE: unique for the
// boot, never reused, so it identifies the namespace and nothing else),
// its nsfs inode (what lsns and /proc/PID/ns/net show as net:[N]; cheap to
// compare, but reused once a namespace is gone) and, where there is one, a
// path that outlives the daemon: /proc/1/ns/net when it is init's
// namespace, else an `ip netns` mount (/run/netns/NAME, or the path given
// with --host-netns). A path is only a hint: every candidate is entered
// and its cookie compared with the recorded one before it is used, since
// /proc/1 of a reader in another PID namespace, or a reused name, may be
// another namespace.
//
// The daemon makes no bind mount of its own (for example an nsfs handle
// under the pin directory): a mount made in the daemon's mount namespace
// reaches the host's only with shared propagation, it would keep a dead
// namespace alive, and it would make the pin directory unremovable until
// unmounted. Where no path outlives the daemon, any process still in the
// namespace gives one (/proc/PID/ns/net); with none visible the reader
// says where the table is and how to remove it.
package hostnetns

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/imdsguard/imdsguard/internal/loader"
	"github.com/imdsguard/imdsguard/internal/netnsexec"
)

// Init is the network namespace of the init process: the host's, for a
// daemon that shares the host's PID namespace.
const Init = "/proc/1/ns/net"

// Record is where the daemon's table is.
type Record struct {
	Cookie uint64
	Inode  uint64 // 0 when unknown (meta of an older version)
	Path   string // a path that outlives the daemon; "" when none is known
	// Given is the --host-netns path the daemon ran with ("" for its own).
	Given string
}

// Describe returns the inode of the namespace at given ("" for the
// caller's own) and a path that names it and outlives the caller, or ""
// when there is none.
func Describe(given string) (inode uint64, durable string, err error) {
	id, err := netnsexec.ID(given)
	if err != nil {
		return 0, "", fmt.Errorf("identifying the host network namespace: %w", err)
	}
	for _, p := range append([]string{Init, given}, netnsMounts()...) {
		if p == "" || !outlives(p) {
			continue
		}
		if pid, err := netnsexec.ID(p); err == nil && pid == id {
			return id[1], p, nil
		}
	}
	return id[1], "", nil
}

// outlives says whether a namespace path stays valid when the process
// that names it exits: /proc/PID paths do not, but for init's.
func outlives(p string) bool {
	return !strings.HasPrefix(filepath.Clean(p), "/proc/") || filepath.Clean(p) == Init
}

// netnsMounts lists the `ip netns` mounts, sorted.
func netnsMounts() []string {
	var paths []string
	for _, dir := range []string{"/run/netns", "/var/run/netns"} {
		entries, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range entries {
			paths = append(paths, filepath.Join(dir, e.Name()))
		}
	}
	sort.Strings(paths)
	return paths
}

// Find returns a path to the recorded namespace ("" when it is the
// caller's own), or an *UnreachableError when no path visible from here
// leads to it.
func Find(r Record) (string, error) {
	if r.Cookie == 0 {
		return "", nil // nothing recorded: the caller's own, as before
	}
	seen := map[[2]uint64]bool{}
	try := func(p string) bool {
		id, err := netnsexec.ID(p)
		if err != nil || seen[id] || (r.Inode != 0 && id[1] != r.Inode) {
			return false
		}
		seen[id] = true
		cookie, err := loader.NetnsCookie(p)
		return err == nil && cookie == r.Cookie
	}
	if try("") {
		return "", nil
	}
	// Then the paths likely to lead there, and last every process's.
	for _, list := range []func() []string{
		func() []string { return append([]string{r.Path, r.Given, Init}, netnsMounts()...) },
		processNetns,
	} {
		for _, p := range list() {
			if p != "" && try(p) {
				return p, nil
			}
		}
	}
	return "", &UnreachableError{Record: r}
}

// processNetns lists /proc/PID/ns/net for every process visible here.
func processNetns() []string {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var paths []string
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err == nil {
			paths = append(paths, filepath.Join("/proc", e.Name(), "ns", "net"))
		}
	}
	return paths
}

// UnreachableError says where the table is when no path from here leads
// to its namespace, and how to remove it.
type UnreachableError struct{ Record }

// Name is the namespace as lsns and /proc/PID/ns/net show it.
func (e *UnreachableError) Name() string {
	if e.Inode == 0 {
		return fmt.Sprintf("netns cookie %d", e.Cookie)
	}
	return fmt.Sprintf("net:[%d] (netns cookie %d)", e.Inode, e.Cookie)
}

func (e *UnreachableError) Error() string {
	var where strings.Builder
	where.WriteString("it is not this process's, nor " + Init)
	for _, p := range []string{e.Path, e.Given} {
		if p != "" && p != Init {
			where.WriteString(", nor " + p)
		}
	}
	where.WriteString(", nor under /run/netns, and no process visible here is in it")
	lsns := "lsns -t net"
	if e.Inode != 0 {
		lsns = fmt.Sprintf("lsns -t net | grep %d", e.Inode)
	}
	return fmt.Sprintf("the nftables table inet imdsguard and the uplink guard's filters are in the daemon's network namespace %s, which cannot be reached from here (%s): "+
		"remove them with `nsenter --net=/proc/PID/ns/net imdsguard detach`, PID being a process in that namespace (on the host, `%s` shows one)", e.Name(), where.String(), lsns)
}
