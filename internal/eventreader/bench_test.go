package eventreader

import (
	"bytes"
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/imdsguard/imdsguard/bpf"
	"github.com/imdsguard/imdsguard/internal/cgroupfs"
	"github.com/imdsguard/imdsguard/internal/output"
	"github.com/imdsguard/imdsguard/internal/target"
)

// rawRecord is a ring buffer record as the kernel writes it: a credential
// request by pid from the cgroup with id cgroupID.
func rawRecord(tb testing.TB, pid uint32, cgroupID uint64, comm string) []byte {
	tb.Helper()
	raw := bpf.ImdsguardEvent{
		CgroupId: cgroupID, NetnsCookie: 4096, Pid: pid, Ppid: 1, Tid: pid,
		Uid: 1000, Gid: 1000, Port: 80, Kind: uint8(bpf.KindRequest), Action: uint8(bpf.ActionDeny),
		Reason: uint8(bpf.ReasonIMDSv1NoToken), Flags: uint8(bpf.EventCredentialAccess | bpf.EventHostNetns), Gen: 1, Rule: 2,
	}
	copy(raw.Addr[:], []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 169, 254, 169, 254})
	setInt8s(raw.Comm[:], comm)
	raw.MethodLen = uint8(setInt8s(raw.Method[:], "GET"))
	raw.PathLen = uint16(setInt8s(raw.Path[:], "/latest/meta-data/iam/security-credentials/node-role"))
	var b bytes.Buffer
	if err := binary.Write(&b, binary.NativeEndian, &raw); err != nil {
		tb.Fatal(err)
	}
	return b.Bytes()
}

func setInt8s(dst []int8, s string) int {
	n := min(len(dst), len(s))
	for i := range n {
		dst[i] = int8(s[i])
	}
	return n
}

// benchCgroup makes a cgroup named like a containerd pod's container, so
// that the path resolves and containerid.Parse has a container to find; 0
// (no cgroup) when not root.
func benchCgroup(b *testing.B) (*CgroupResolver, uint64) {
	mount, err := cgroupfs.V2Mount()
	if err != nil || os.Geteuid() != 0 {
		return nil, 0
	}
	pod, err := os.MkdirTemp(mount, "imdsguard-bench-")
	if err != nil {
		b.Skip(err)
	}
	b.Cleanup(func() { os.Remove(pod) })
	dir := filepath.Join(pod, "cri-containerd-"+strings.Repeat("ab", 32)+".scope")
	if err := os.Mkdir(dir, 0o755); err != nil {
		b.Skip(err)
	}
	b.Cleanup(func() { os.Remove(dir) })
	r, err := NewCgroupResolver(mount)
	if err != nil {
		b.Skip(err)
	}
	b.Cleanup(func() { r.Close() })
	id, err := cgroupfs.ID(dir)
	if err != nil {
		b.Fatal(err)
	}
	return r, id
}

// BenchmarkEventPath is what one reported event costs the daemon from the
// ring buffer record to the bytes written: decode, enrich (cgroup path from
// a warm cache, container id, pod names, a live process's /proc details)
// and the output pipeline writing to io.Discard. Folding is off, so every
// record is reported. "polled" events are stamped after the process
// cache's last check of their process, so each costs a poll; "batched"
// ones before it, as most of a batch read from the ring buffer are.
func BenchmarkEventPath(b *testing.B) {
	cgroups, cgroupID := benchCgroup(b)
	for _, format := range []string{target.FormatJSON, target.FormatOCSF} {
		for _, polled := range []bool{true, false} {
			name := format + "/batched"
			if polled {
				name = format + "/polled"
			}
			b.Run(name, func(b *testing.B) { benchEventPath(b, format, polled, cgroups, cgroupID) })
		}
	}
}

func benchEventPath(b *testing.B, format string, polled bool, cgroups *CgroupResolver, cgroupID uint64) {
	pipe, err := output.New(output.Config{Format: format, Targets: []string{"stdout"}, Hostname: "node-1"}, io.Discard, zap.NewNop())
	if err != nil {
		b.Fatal(err)
	}
	defer pipe.Close()
	opts := ReaderOptions{
		Cgroups: cgroups, Hostname: "node-1", InstanceID: "i-0123456789abcdef0",
		Rules: func(uint8, uint16) string { return "deny-credentials" },
		Names: func(string) (PodNames, bool) {
			return PodNames{Pod: "web-1", Namespace: "default", Container: "app", Image: "nginx:1.27"}, true
		},
		Cloud: func() string { return "aws" },
	}
	r := newReader(nil, opts, NewFolder(pipe, 0), zap.NewNop())
	defer r.procs.close()
	rec := rawRecord(b, uint32(os.Getpid()), cgroupID, selfComm(b))
	binary.NativeEndian.PutUint64(rec, r.procs.mono())
	var raw bpf.ImdsguardEvent
	b.ReportAllocs()
	start := cpuTime(b)
	for b.Loop() {
		if polled {
			binary.NativeEndian.PutUint64(rec, r.procs.mono())
		}
		r.handle(rec, &raw)
	}
	// The machine may be shared: CPU time, not wall time, is what an
	// event costs the node.
	b.ReportMetric(float64(cpuTime(b)-start)/float64(b.N), "cpu-ns/op")
}

// cpuTime is the CPU time the process has used (all threads: the GC's
// work on the event path's garbage counts too).
func cpuTime(tb testing.TB) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// selfComm is the kernel's comm of this process, what its events carry.
func selfComm(tb testing.TB) string {
	tb.Helper()
	b, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		tb.Fatal(err)
	}
	return strings.TrimSuffix(string(b), "\n")
}

// BenchmarkProcessInfo is what an event of a process the cache does not
// know yet costs in /proc reads, against the os package's reads before.
func BenchmarkProcessInfo(b *testing.B) {
	pid := uint32(os.Getpid())
	for name, read := range map[string]func(uint32) (string, string){"syscalls": processInfo, "os": processInfoOS} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			start := cpuTime(b)
			for b.Loop() {
				read(pid)
			}
			b.ReportMetric(float64(cpuTime(b)-start)/float64(b.N), "cpu-ns/op")
		})
	}
}
