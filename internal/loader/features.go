package loader

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"

	"github.com/imdsguard/imdsguard/bpf"
)

// MinKernel is the oldest kernel line imdsguard is tested on (CI boots it,
// test/kernels) and supports. Older kernels that pass every probe may work;
// those that do not are refused at start.
const MinKernel = "6.1"

// requirement is one kernel feature the programs cannot run without.
type requirement struct {
	name  string // what is missing, as the start-up error names it
	since string // the Linux release that brought it
	probe func() error
}

// requirements derives what the kernel must offer from the compiled
// objects themselves, so that a helper added to a program is probed without
// anyone remembering to list it: kernel BTF (the CO-RE relocations), every
// map type, every program type with its attach type, and every helper each
// program calls, probed in that program's type. imdsguard calls no kfuncs.
func requirements(spec *ebpf.CollectionSpec) []requirement {
	reqs := []requirement{
		{"kernel BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF)", "5.4", func() error {
			_, err := btf.LoadKernelSpec()
			return err
		}},
		{"the SO_NETNS_COOKIE socket option", "5.14", probeNetnsCookie},
	}
	for _, mt := range mapTypes(spec) {
		reqs = append(reqs, requirement{
			name:  fmt.Sprintf("%s maps", mt),
			since: mapSince[mt],
			probe: func() error { return features.HaveMapType(mt) },
		})
	}
	hooks := hooksByType(spec)
	seen := map[string]bool{}
	for _, p := range programs(spec) {
		hook := hooks[p.Type]
		if p.Type != ebpf.Tracing && !seen[p.SectionName] {
			seen[p.SectionName] = true
			reqs = append(reqs, requirement{
				name:  fmt.Sprintf("%s programs", p.SectionName),
				since: progSince[p.Type],
				probe: func() error { return haveProgram(p.Type, p.AttachType) },
			})
		}
		for _, fn := range helpersOf(p) {
			key := fmt.Sprintf("%s/%s", p.Type, fn)
			// The features package has no helper probes for tracing
			// programs (the tcp iterator): loading the program checks them.
			if seen[key] || p.Type == ebpf.Tracing {
				continue
			}
			seen[key] = true
			reqs = append(reqs, requirement{
				name:  fmt.Sprintf("helper %s in %s programs", helperName(fn), hook),
				since: helperSince(p.Type, fn),
				probe: func() error { return features.HaveProgramHelper(p.Type, fn) },
			})
		}
	}
	return reqs
}

// programs returns the spec's programs in name order, for a stable order of
// probes and so of the first missing feature named.
func programs(spec *ebpf.CollectionSpec) []*ebpf.ProgramSpec {
	names := make([]string, 0, len(spec.Programs))
	for n := range spec.Programs {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]*ebpf.ProgramSpec, len(names))
	for i, n := range names {
		out[i] = spec.Programs[n]
	}
	return out
}

// hooksByType names the hooks of each program type, as the start-up error
// says where a helper is missing: "cgroup/connect4, cgroup/connect6".
func hooksByType(spec *ebpf.CollectionSpec) map[ebpf.ProgramType]string {
	sections := map[ebpf.ProgramType][]string{}
	for _, p := range programs(spec) {
		sections[p.Type] = append(sections[p.Type], p.SectionName)
	}
	out := map[ebpf.ProgramType]string{}
	for t, s := range sections {
		sort.Strings(s)
		out[t] = strings.Join(s, ", ")
	}
	return out
}

// mapTypes lists the types of the maps the programs share (not .rodata
// and the like, which every kernel with BTF has).
func mapTypes(spec *ebpf.CollectionSpec) []ebpf.MapType {
	set := map[ebpf.MapType]bool{}
	for _, name := range sharedMaps(spec) {
		set[spec.Maps[name].Type] = true
	}
	out := make([]ebpf.MapType, 0, len(set))
	for t := range set {
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// helpersOf lists the helpers a program calls, in order of first call.
func helpersOf(p *ebpf.ProgramSpec) []asm.BuiltinFunc {
	var out []asm.BuiltinFunc
	seen := map[asm.BuiltinFunc]bool{}
	for _, ins := range p.Instructions {
		if !ins.IsBuiltinCall() {
			continue
		}
		fn := asm.BuiltinFunc(ins.Constant)
		if !seen[fn] {
			seen[fn] = true
			out = append(out, fn)
		}
	}
	return out
}

// haveProgram loads a two-instruction program of this type and attach type:
// a kernel that knows the type but not the attach type refuses it.
func haveProgram(pt ebpf.ProgramType, at ebpf.AttachType) error {
	if err := features.HaveProgramType(pt); err != nil {
		return err
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:       pt,
		AttachType: at,
		License:    "Dual BSD/GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, 1),
			asm.Return(),
		},
	})
	if err != nil {
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.E2BIG) {
			return fmt.Errorf("attach type %s: %w", at, ebpf.ErrNotSupported)
		}
		return err
	}
	return prog.Close()
}

// probeNetnsCookie reads this process's own network namespace cookie, the
// way the daemon reads the host's.
func probeNetnsCookie() error {
	_, err := socketNetnsCookie()
	if errors.Is(err, unix.ENOPROTOOPT) {
		return ebpf.ErrNotSupported
	}
	return err
}

// helperName is the C name of a helper: FnGetCurrentPidTgid ->
// bpf_get_current_pid_tgid.
func helperName(fn asm.BuiltinFunc) string {
	name := strings.TrimPrefix(fn.String(), "Fn")
	var b strings.Builder
	b.WriteString("bpf")
	for _, r := range name {
		if r >= 'A' && r <= 'Z' {
			b.WriteByte('_')
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}

// Releases that brought what the programs use, for the start-up error.
// A helper reaches program types at different times; helperSinceIn holds
// the cases that differ from the helper's first release.
var (
	mapSince = map[ebpf.MapType]string{
		ebpf.Hash: "3.19", ebpf.Array: "3.19", ebpf.PerCPUArray: "4.6",
		ebpf.SockHash: "4.18", ebpf.SkStorage: "5.2", ebpf.RingBuf: "5.8", ebpf.LRUHash: "4.10",
	}
	progSince = map[ebpf.ProgramType]string{
		ebpf.CGroupSKB: "4.10", ebpf.SockOps: "4.13", ebpf.SkMsg: "4.17",
		ebpf.CGroupSockAddr: "4.17", ebpf.SchedCLS: "4.1", ebpf.CGroupSockopt: "5.3",
	}
	helperFirst = map[asm.BuiltinFunc]string{
		asm.FnMapLookupElem: "3.19", asm.FnMapUpdateElem: "3.19",
		asm.FnKtimeGetNs: "4.1", asm.FnGetCurrentPidTgid: "4.2", asm.FnGetCurrentUidGid: "4.2",
		asm.FnGetCurrentComm: "4.2", asm.FnSkbLoadBytes: "4.5", asm.FnGetCurrentTask: "4.8",
		asm.FnGetSocketCookie: "4.12", asm.FnGetSocketUid: "4.12", asm.FnSkbCgroupId: "4.18", asm.FnSkbAncestorCgroupId: "4.19", asm.FnSockOpsCbFlagsSet: "4.16", asm.FnMsgApplyBytes: "4.17",
		asm.FnMsgCorkBytes: "4.17", asm.FnMsgPullData: "4.17", asm.FnGetCurrentCgroupId: "4.18",
		asm.FnSockHashUpdate: "4.18", asm.FnSkFullsock: "5.1", asm.FnSkStorageGet: "5.2",
		asm.FnProbeReadKernel: "5.5", asm.FnGetCurrentAncestorCgroupId: "5.6", asm.FnGetNetnsCookie: "5.7",
		asm.FnRingbufReserve: "5.8", asm.FnRingbufSubmit: "5.8", asm.FnRingbufQuery: "5.8",
		asm.FnSkcToTcpSock: "5.9", asm.FnLoop: "5.17", asm.FnSkcToMptcpSock: "5.19",
	}
	helperSinceIn = map[ebpf.ProgramType]map[asm.BuiltinFunc]string{
		// Debian's 5.10 kernel (booted by test/kernels) lacks it in sk_msg.
		ebpf.SkMsg: {asm.FnGetNetnsCookie: "5.15"},
	}
)

func helperSince(pt ebpf.ProgramType, fn asm.BuiltinFunc) string {
	if v, ok := helperSinceIn[pt][fn]; ok {
		return v
	}
	return helperFirst[fn]
}

// CheckKernel probes every feature the programs need and names the first
// missing one, the hook that needs it and the release that brought it, so
// that an old kernel fails at start with one clear line, before anything
// is attached, instead of running with less protection.
func CheckKernel() error {
	spec, err := bpf.LoadImdsguard()
	if err != nil {
		return fmt.Errorf("loading BPF spec: %w", err)
	}
	return checkRequirements(requirements(spec), kernelRelease())
}

func checkRequirements(reqs []requirement, release string) error {
	for _, r := range reqs {
		err := r.probe()
		if err == nil {
			continue
		}
		if errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, unix.ENOENT) {
			since := "a newer kernel"
			if r.since != "" {
				since = "Linux " + r.since
			}
			return fmt.Errorf("kernel %s lacks %s (%s); imdsguard supports Linux %s and newer", release, r.name, since, MinKernel)
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
