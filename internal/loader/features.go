package loader

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"
)

// requirement is one kernel feature the programs cannot run without.
type requirement struct {
	name  string
	probe func() error
}

func requirements() []requirement {
	helper := func(pt ebpf.ProgramType, fn asm.BuiltinFunc) func() error {
		return func() error { return features.HaveProgramHelper(pt, fn) }
	}
	reqs := []requirement{
		{"cgroup sock_addr programs (cgroup/connect4, cgroup/connect6)", func() error { return features.HaveProgramType(ebpf.CGroupSockAddr) }},
		{"sockops programs", func() error { return features.HaveProgramType(ebpf.SockOps) }},
		{"sk_msg programs", func() error { return features.HaveProgramType(ebpf.SkMsg) }},
		{"BPF ring buffer maps", func() error { return features.HaveMapType(ebpf.RingBuf) }},
		{"per-CPU array maps", func() error { return features.HaveMapType(ebpf.PerCPUArray) }},
		{"sockhash maps", func() error { return features.HaveMapType(ebpf.SockHash) }},
		{"socket storage maps", func() error { return features.HaveMapType(ebpf.SkStorage) }},
	}
	for _, fn := range []asm.BuiltinFunc{
		asm.FnGetNetnsCookie,
		asm.FnGetCurrentPidTgid,
		asm.FnGetCurrentUidGid,
		asm.FnGetCurrentComm,
		asm.FnGetCurrentCgroupId,
		asm.FnKtimeGetNs,
		asm.FnRingbufReserve,
		asm.FnRingbufSubmit,
		asm.FnSkStorageGet,
		asm.FnGetCurrentTask, // ppid, read in the kernel
		asm.FnProbeReadKernel,
	} {
		reqs = append(reqs, requirement{
			name:  fmt.Sprintf("helper %s in cgroup sock_addr programs", fn),
			probe: helper(ebpf.CGroupSockAddr, fn),
		})
	}
	for _, fn := range []asm.BuiltinFunc{
		asm.FnLoop, // bpf_loop: Linux 5.17
		asm.FnMsgPullData,
		asm.FnMsgCorkBytes,
		asm.FnMsgApplyBytes,
		asm.FnSkStorageGet,
		asm.FnGetNetnsCookie,
		asm.FnGetCurrentPidTgid,
		asm.FnGetCurrentUidGid,
		asm.FnGetCurrentCgroupId,
		asm.FnGetCurrentComm,
		asm.FnRingbufReserve,
		asm.FnGetCurrentTask,
		asm.FnProbeReadKernel,
	} {
		reqs = append(reqs, requirement{
			name:  fmt.Sprintf("helper %s in sk_msg programs", fn),
			probe: helper(ebpf.SkMsg, fn),
		})
	}
	for _, fn := range []asm.BuiltinFunc{asm.FnSkStorageGet, asm.FnSkFullsock, asm.FnSkbLoadBytes, asm.FnSkbCgroupId} {
		reqs = append(reqs, requirement{
			name:  fmt.Sprintf("helper %s in cgroup skb programs", fn),
			probe: helper(ebpf.CGroupSKB, fn),
		})
	}
	return reqs
}

// CheckKernel probes every feature the programs need and names the first
// missing one with the running kernel's release, so that an old kernel fails
// at start with a clear message instead of running with less protection.
func CheckKernel() error {
	for _, r := range requirements() {
		err := r.probe()
		if err == nil {
			continue
		}
		if errors.Is(err, ebpf.ErrNotSupported) {
			return fmt.Errorf("kernel %s lacks %s (imdsguard needs Linux 5.17 or newer)", kernelRelease(), r.name)
		}
		return fmt.Errorf("probing %s: %w", r.name, err)
	}
	return nil
}

func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "(unknown)"
	}
	return unix.ByteSliceToString(u.Release[:])
}
