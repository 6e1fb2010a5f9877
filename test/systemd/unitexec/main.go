// Command unitexec runs the imdsguard daemon the way deploy/systemd's unit
// has systemd run it, for the privileged tests in test/systemd, which run
// where systemd is not PID 1:
//
//   - with exactly the given capabilities (bounding, inheritable, ambient
//     and so permitted and effective, as uid 0) and no_new_privs, through
//     setpriv(1): CapabilityBoundingSet=, AmbientCapabilities=,
//     NoNewPrivileges=yes;
//   - in a private mount namespace where every mount is read-only except
//     /dev, /proc (but /proc/sys and /proc/sysrq-trigger are read-only) and
//     the -rw paths: ProtectSystem=strict, ProtectKernelTunables=yes,
//     ProtectControlGroups=yes, ReadWritePaths=.
//
// The daemon's pid is this process's pid: every step execs the next, so the
// test harness signals the daemon itself.
//
// Usage (daemon.Start passes the daemon's arguments after the program):
//
//	unitexec -caps CAP_BPF,CAP_NET_ADMIN [-rw /sys/fs/bpf]... -- /path/to/imdsguard run ... --host-netns PATH ...
//
// The unit runs the daemon in the host's network namespace without
// --host-netns, so unitexec removes --host-netns PATH from the daemon's
// arguments and runs it inside PATH (nsenter --net=PATH) instead. It refuses
// to run without --host-netns: the daemon would then put its nftables table
// in this machine's own network namespace. A --pin-dir is made writable
// like ReadWritePaths=/sys/fs/bpf.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

type pathList []string

func (p *pathList) String() string     { return strings.Join(*p, ",") }
func (p *pathList) Set(v string) error { *p = append(*p, v); return nil }

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "unitexec: %v\n", err)
		os.Exit(126)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("unitexec", flag.ContinueOnError)
	caps := fs.String("caps", "", "comma-separated capabilities the program keeps (CAP_BPF,...); empty: none")
	stage2 := fs.Bool("stage2", false, "internal: already inside the namespaces; set up the mounts")
	var rw pathList
	fs.Var(&rw, "rw", "path that stays writable (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	prog := fs.Args()
	if len(prog) == 0 {
		return errors.New("no program given")
	}
	capArg, err := setprivCaps(*caps)
	if err != nil {
		return err
	}
	if *stage2 {
		return sandboxAndExec(rw, capArg, prog)
	}

	// Stage 1: enter the lab's namespace and a private mount namespace,
	// then come back as stage 2.
	daemonArgs, netns, found := cutHostNetns(prog[1:])
	if !found {
		return errors.New("no --host-netns in the daemon's arguments: refusing to run the daemon in this machine's own network namespace")
	}
	if pin := flagValue(daemonArgs, "--pin-dir"); pin != "" {
		rw = append(rw, pin)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	nsenter, err := exec.LookPath("nsenter")
	if err != nil {
		return err
	}
	argv := []string{nsenter, "--net=" + netns, "--",
		"unshare", "--mount", "--propagation", "private", "--",
		self, "-stage2", "-caps", *caps}
	for _, p := range rw {
		argv = append(argv, "-rw", p)
	}
	argv = append(argv, "--", prog[0])
	argv = append(argv, daemonArgs...)
	return syscall.Exec(nsenter, argv, os.Environ())
}

// setprivCaps turns CAP_BPF,CAP_NET_ADMIN into setpriv's "-all,+bpf,+net_admin".
func setprivCaps(list string) (string, error) {
	out := "-all"
	for _, c := range strings.Split(list, ",") {
		c = strings.TrimSpace(c)
		if c == "" {
			continue
		}
		name, ok := strings.CutPrefix(c, "CAP_")
		if !ok || name == "" {
			return "", fmt.Errorf("-caps: %q is not a CAP_ name", c)
		}
		out += ",+" + strings.ToLower(name)
	}
	return out, nil
}

// cutHostNetns removes "--host-netns PATH" (or "--host-netns=PATH").
func cutHostNetns(args []string) (rest []string, path string, found bool) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case (a == "--host-netns" || a == "-host-netns") && i+1 < len(args):
			path, found = args[i+1], true
			i++
		case strings.HasPrefix(a, "--host-netns=") || strings.HasPrefix(a, "-host-netns="):
			path, found = a[strings.Index(a, "=")+1:], true
		default:
			rest = append(rest, a)
		}
	}
	return rest, path, found
}

func flagValue(args []string, name string) string {
	for i, a := range args {
		if a == name && i+1 < len(args) {
			return args[i+1]
		}
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v
		}
	}
	return ""
}

// sandboxAndExec runs in the private mount namespace unshare(1) made: it
// makes the file system read-only as the unit's sandbox does, then execs
// the program through setpriv with the capabilities.
func sandboxAndExec(rw []string, capArg string, prog []string) error {
	if err := checkPrivateMountNS(); err != nil {
		return err
	}
	// unshare --propagation private did this already; it is what keeps
	// every remount below out of the machine's own mount namespace.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making mounts private: %w", err)
	}
	mounts, err := readMounts()
	if err != nil {
		return err
	}
	for _, m := range mounts {
		// ProtectSystem=strict leaves the API file systems /dev and
		// /proc writable (PrivateDevices= gives a private /dev; not
		// emulated).
		if under(m.point, "/proc") || under(m.point, "/dev") {
			continue
		}
		if err := remount(m.point, m.flags|unix.MS_RDONLY); err != nil {
			return err
		}
	}
	// ProtectKernelTunables=yes: /proc/sys and /proc/sysrq-trigger.
	for _, p := range []string{"/proc/sys", "/proc/sysrq-trigger"} {
		if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
			continue // no magic SysRq in this kernel
		}
		if err := bindReadOnly(p, true); err != nil {
			return err
		}
	}
	// ReadWritePaths=
	for _, p := range rw {
		if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
			// the daemon creates it: its parent must be writable
			p = filepath.Dir(p)
		}
		if err := bindReadOnly(p, false); err != nil {
			return err
		}
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		return err
	}
	argv := []string{setpriv, "--no-new-privs",
		"--bounding-set=" + capArg, "--inh-caps=" + capArg, "--ambient-caps=" + capArg, "--"}
	argv = append(argv, prog...)
	return syscall.Exec(setpriv, argv, os.Environ())
}

// checkPrivateMountNS refuses to touch mounts in the mount namespace of the
// process that started us (the test, in the machine's namespace).
func checkPrivateMountNS() error {
	self, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return err
	}
	parent, err := os.Readlink("/proc/" + strconv.Itoa(os.Getppid()) + "/ns/mnt")
	if err != nil {
		return err
	}
	if self == parent {
		return fmt.Errorf("not in a private mount namespace (%s is the parent's): refusing to remount", self)
	}
	return nil
}

type mount struct {
	point string
	flags uintptr // per-mount flags to keep (nosuid, nodev, ...)
}

// readMounts lists the mount points, shortest first, with their per-mount
// flags from /proc/self/mountinfo.
func readMounts() ([]mount, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var out []mount
	for _, line := range strings.Split(string(data), "\n") {
		// id parent major:minor root mountpoint options ...
		f := strings.Fields(line)
		if len(f) < 6 {
			continue
		}
		p := unescape(f[4])
		if seen[p] {
			continue
		}
		seen[p] = true
		out = append(out, mount{point: p, flags: mountFlags(f[5])})
	}
	sort.SliceStable(out, func(i, j int) bool { return len(out[i].point) < len(out[j].point) })
	return out, nil
}

func mountFlags(opts string) uintptr {
	var fl uintptr
	for _, o := range strings.Split(opts, ",") {
		switch o {
		case "nosuid":
			fl |= unix.MS_NOSUID
		case "nodev":
			fl |= unix.MS_NODEV
		case "noexec":
			fl |= unix.MS_NOEXEC
		case "noatime":
			fl |= unix.MS_NOATIME
		case "nodiratime":
			fl |= unix.MS_NODIRATIME
		case "relatime":
			fl |= unix.MS_RELATIME
		}
	}
	return fl
}

// flagsAt returns the per-mount flags of the mount that holds path.
func flagsAt(path string) (uintptr, error) {
	mounts, err := readMounts()
	if err != nil {
		return 0, err
	}
	best := -1
	for i, m := range mounts {
		if under(path, m.point) && (best < 0 || len(m.point) >= len(mounts[best].point)) {
			best = i
		}
	}
	if best < 0 {
		return 0, fmt.Errorf("no mount holds %s", path)
	}
	return mounts[best].flags, nil
}

func remount(point string, flags uintptr) error {
	err := unix.Mount("", point, "", unix.MS_BIND|unix.MS_REMOUNT|flags, "")
	if err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EACCES) {
		// ENOENT/EACCES: a mount point hidden under another mount
		return fmt.Errorf("remounting %s: %w", point, err)
	}
	return nil
}

// bindReadOnly bind-mounts path onto itself and makes that mount read-only
// (ro) or writable.
func bindReadOnly(path string, ro bool) error {
	flags, err := flagsAt(path)
	if err != nil {
		return err
	}
	if err := unix.Mount(path, path, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind-mounting %s: %w", path, err)
	}
	if ro {
		flags |= unix.MS_RDONLY
	}
	return remount(path, flags)
}

func under(path, dir string) bool {
	if dir == "/" {
		return true
	}
	return path == dir || strings.HasPrefix(path, dir+"/")
}

// unescape undoes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
