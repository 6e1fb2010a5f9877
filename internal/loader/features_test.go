package loader

import (
	"errors"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/imdsguard/imdsguard/bpf"
)

// The requirements come from the compiled programs: every helper a program
// calls is probed in that program's type, so a helper added to the C code
// cannot be forgotten here.
func TestRequirementsCoverEveryHelperOfEveryProgram(t *testing.T) {
	spec, err := bpf.LoadImdsguard()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	hooks := hooksByType(spec)
	for _, r := range requirements(spec) {
		names[r.name] = true
		if r.since == "" {
			t.Errorf("requirement %q names no release", r.name)
		}
	}
	for _, p := range spec.Programs {
		if p.Type == ebpf.Tracing {
			continue
		}
		for _, fn := range helpersOf(p) {
			want := "helper " + helperName(fn) + " in " + hooks[p.Type] + " programs"
			if !names[want] {
				t.Errorf("no requirement %q", want)
			}
		}
	}
	for _, want := range []string{
		"helper bpf_loop in sk_msg programs",
		"helper bpf_get_netns_cookie in sk_msg programs",
		"helper bpf_msg_cork_bytes in sk_msg programs",
		"helper bpf_get_current_task in cgroup/connect4, cgroup/connect6 programs",
		"sk_msg programs", "cgroup_skb/egress programs", "cgroup/connect6 programs", "RingBuf maps",
	} {
		if !names[want] {
			t.Errorf("no requirement %q among %v", want, names)
		}
	}
	// The judge reads the writer's command from the task, not with
	// bpf_get_current_comm, which sk_msg programs lack on 6.1 and 6.12.
	if names["helper bpf_get_current_comm in sk_msg programs"] {
		t.Error("sk_msg calls bpf_get_current_comm, which Linux 6.1 and 6.12 do not offer there")
	}
}

func TestHelperName(t *testing.T) {
	for fn, want := range map[asm.BuiltinFunc]string{
		asm.FnLoop:              "bpf_loop",
		asm.FnGetCurrentPidTgid: "bpf_get_current_pid_tgid",
		asm.FnSkStorageGet:      "bpf_sk_storage_get",
	} {
		if got := helperName(fn); got != want {
			t.Errorf("helperName(%v) = %q, want %q", fn, got, want)
		}
	}
}

// The first missing feature is named with the hook, the release that
// brought it and the supported minimum; a probe that fails otherwise is
// reported as a probe failure, not as a missing feature.
func TestMissingFeatureIsNamed(t *testing.T) {
	ok := func() error { return nil }
	missing := func() error { return ebpf.ErrNotSupported }
	err := checkRequirements([]requirement{
		{"a", "4.1", ok},
		{"helper bpf_loop in sk_msg programs", "5.17", missing},
		{"c", "6.0", missing},
	}, "5.10.0-32-cloud-amd64")
	want := "kernel 5.10.0-32-cloud-amd64 lacks helper bpf_loop in sk_msg programs (Linux 5.17); imdsguard supports Linux 6.1 and newer"
	if err == nil || err.Error() != want {
		t.Fatalf("got %v, want %q", err, want)
	}
	broken := errors.New("permission denied")
	err = checkRequirements([]requirement{{"x", "5.0", func() error { return broken }}}, "r")
	if !errors.Is(err, broken) || !strings.HasPrefix(err.Error(), "probing x: ") {
		t.Fatalf("got %v, want a probe failure", err)
	}
}
