package lab

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/imdsguard/imdsguard/internal/cgroupfs"
)

// mountInfo is the part of a /proc/self/mountinfo line the lab needs.
type mountInfo struct {
	mountPoint string // where the cgroup2 hierarchy is mounted
	root       string // root of the mount within the hierarchy ("/" usually)
}

// CgroupV2Mount returns the cgroup v2 mount point, read from
// /proc/self/mountinfo: /sys/fs/cgroup if that is cgroup2 (unified setup),
// else /sys/fs/cgroup/unified (hybrid setup), else the first other cgroup2
// mount.
func CgroupV2Mount() (string, error) {
	mi, err := cgroup2Mount()
	return mi.mountPoint, err
}

func cgroup2Mount() (mountInfo, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return mountInfo{}, err
	}
	defer f.Close()
	return parseCgroup2Mount(f)
}

func parseCgroup2Mount(r io.Reader) (mountInfo, error) {
	mounts, err := cgroupfs.ParseMounts(r)
	if err != nil {
		return mountInfo{}, err
	}
	found := make([]mountInfo, len(mounts))
	for i, m := range mounts {
		found[i] = mountInfo{mountPoint: m.Point, root: m.Root}
	}
	for _, want := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		// The last mount on a path is the visible one.
		for i := len(found) - 1; i >= 0; i-- {
			if found[i].mountPoint == want {
				return found[i], nil
			}
		}
	}
	if len(found) > 0 {
		return found[0], nil
	}
	return mountInfo{}, errors.New("no cgroup2 filesystem mounted")
}

// privilegedProblem returns "" when the lab can run, else the reason why
// not, starting with "needs root: ", "needs cgroup v2: " or "needs BPF: ".
func privilegedProblem() string {
	if runtime.GOOS != "linux" {
		return "needs root: Linux only"
	}
	if uid := os.Geteuid(); uid != 0 {
		return fmt.Sprintf("needs root: running as uid %d (network namespaces, cgroups and BPF need root)", uid)
	}
	for _, tool := range []string{"ip", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Sprintf("needs root: tool %s not found: %v", tool, err)
		}
	}
	mi, err := cgroup2Mount()
	if err != nil {
		return "needs cgroup v2: " + err.Error()
	}
	if err := unix.Access(mi.mountPoint, unix.W_OK); err != nil {
		return fmt.Sprintf("needs cgroup v2: %s is not writable: %v", mi.mountPoint, err)
	}
	if err := probeBPF(); err != nil {
		return "needs BPF: " + err.Error()
	}
	return ""
}

// mustRunPrivileged reports whether privileged tests must not be skipped.
func mustRunPrivileged(getenv func(string) string) bool {
	return strings.EqualFold(getenv("CI"), "true") || getenv("IMDSGUARD_REQUIRE_PRIVILEGED") == "1"
}

// RequirePrivileged skips the test when the machine cannot run privileged
// tests (not root, no cgroup v2, no BPF), with a message saying why. When
// CI=true or IMDSGUARD_REQUIRE_PRIVILEGED=1 it fails the test instead:
// privileged tests must run in CI.
//
// With -short (make test-unit, the unprivileged quick pass) it skips
// privileged tests too, except under CI=true / IMDSGUARD_REQUIRE_PRIVILEGED=1,
// where they always run.
func RequirePrivileged(t testing.TB) {
	t.Helper()
	if testing.Short() && !mustRunPrivileged(os.Getenv) {
		t.Skip("privileged test skipped in -short mode")
	}
	requirePrivileged(t, privilegedProblem(), os.Getenv)
}

// Require is RequirePrivileged's decision for another need a test has
// (a package, a tool): with problem set it skips, or fails where
// privileged tests are required.
func Require(t testing.TB, problem string) {
	t.Helper()
	requirePrivileged(t, problem, os.Getenv)
}

func requirePrivileged(t testing.TB, problem string, getenv func(string) string) {
	t.Helper()
	if problem == "" {
		return
	}
	if mustRunPrivileged(getenv) {
		t.Fatalf("%s (privileged tests are required: CI=true or IMDSGUARD_REQUIRE_PRIVILEGED=1)", problem)
		return
	}
	t.Skip(problem)
}

// bpfProgLoadAttr is the prefix of union bpf_attr used by BPF_PROG_LOAD, up
// to expected_attach_type.
type bpfProgLoadAttr struct {
	progType           uint32
	insnCnt            uint32
	insns              uint64
	license            uint64
	logLevel           uint32
	logSize            uint32
	logBuf             uint64
	kernVersion        uint32
	progFlags          uint32
	progName           [16]byte
	progIfindex        uint32
	expectedAttachType uint32
}

// probeBPF loads (and immediately closes) a trivial cgroup/connect4
// program, the kind imdsguard attaches.
func probeBPF() error {
	insns := []uint64{
		0xb7 | 1<<32, // r0 = 1 (BPF_ALU64|BPF_MOV|BPF_K)
		0x95,         // exit
	}
	license := []byte("GPL\x00")
	attr := bpfProgLoadAttr{
		progType:           unix.BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
		insnCnt:            uint32(len(insns)),
		insns:              uint64(uintptr(unsafe.Pointer(&insns[0]))),
		license:            uint64(uintptr(unsafe.Pointer(&license[0]))),
		expectedAttachType: unix.BPF_CGROUP_INET4_CONNECT,
	}
	copy(attr.progName[:], "imdsguard_probe")
	var fd uintptr
	var errno unix.Errno
	// The verifier gives up with EAGAIN when a signal is pending (the Go
	// runtime's preemption signals, on a slow machine): try again, as
	// cilium/ebpf does.
	for range 10 {
		fd, _, errno = unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_LOAD, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
		if errno != unix.EAGAIN {
			break
		}
	}
	runtime.KeepAlive(insns)
	runtime.KeepAlive(license)
	if errno != 0 {
		return fmt.Errorf("loading a cgroup/connect4 program failed: %w", errno)
	}
	unix.Close(int(fd))
	return nil
}

// KernelFeaturesEnv lists, comma-separated, the optional kernel features
// that the kernel under test is known to have (the kernel matrix sets it
// per kernel line): a test of one of them fails instead of skipping.
const KernelFeaturesEnv = "IMDSGUARD_KERNEL_FEATURES"

// SkipWithoutKernelFeature skips a test of an optional kernel feature
// (netkit, ipvlan, fmod_ret, compat32) on a kernel without it, saying
// why. The message starts with "kernel lacks ", which the kernel matrix
// accepts as a skip; where KernelFeaturesEnv names the feature, the test
// fails instead: that kernel has it, so the test must run.
func SkipWithoutKernelFeature(t testing.TB, feature, why string) {
	t.Helper()
	skipWithoutKernelFeature(t, feature, why, os.Getenv)
}

func skipWithoutKernelFeature(t testing.TB, feature, why string, getenv func(string) string) {
	t.Helper()
	for _, f := range strings.Split(getenv(KernelFeaturesEnv), ",") {
		if strings.TrimSpace(f) == feature {
			t.Fatalf("this kernel is expected to have %s (%s=%s), but: %s", feature, KernelFeaturesEnv, getenv(KernelFeaturesEnv), why)
			return
		}
	}
	t.Skipf("kernel lacks %s: %s", feature, why)
}

// ProbeFmodRet loads (and closes) a trivial fmod_ret program on
// security_socket_setsockopt, where the daemon puts its setsockopt guard
// for 32-bit calls: an error says this kernel refuses such programs, to
// the test's root too (lockdown, an LSM policy), so a daemon's warning
// about it is the kernel's doing, not its sandbox's.
func ProbeFmodRet() error {
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.Tracing,
		AttachType:   ebpf.AttachModifyReturn,
		AttachTo:     "security_socket_setsockopt",
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		return err
	}
	return p.Close()
}
