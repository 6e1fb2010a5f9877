package bpf

import (
	"errors"
	"os"
	"regexp"
	"strconv"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
)

// verifierBudget is the share of the verifier's one million instructions a
// program may take on the running kernel. Older verifiers prune less (the
// request judge takes 160 000 on 6.18 but 210 000 on 6.1, and took more than
// a million there before its events moved into a bpf_loop callback), so the
// kernel matrix running this on 6.1 warns long before a change stops the
// daemon from loading on the kernels users run.
const verifierBudget = 500_000

var processedRe = regexp.MustCompile(`processed (\d+) insns`)

// TestEveryProgramLoadsWithinHalfTheVerifierBudget loads every program of
// both objects on the running kernel and checks how much of the verifier's
// budget it took.
func TestEveryProgramLoadsWithinHalfTheVerifierBudget(t *testing.T) {
	if os.Geteuid() != 0 {
		requirePrivileged(t, "needs root to load BPF programs")
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		requirePrivileged(t, "cannot raise the memlock limit: "+err.Error())
	}
	for _, load := range []func() (*ebpf.CollectionSpec, error){LoadImdsguard, LoadJudgeTest} {
		spec, err := load()
		if err != nil {
			t.Fatal(err)
		}
		for name := range spec.Programs {
			one := spec.Copy()
			for other := range one.Programs {
				if other != name {
					delete(one.Programs, other)
				}
			}
			coll, err := ebpf.NewCollectionWithOptions(one, ebpf.CollectionOptions{
				Programs: ebpf.ProgramOptions{LogLevel: ebpf.LogLevelStats},
			})
			if err != nil {
				var verr *ebpf.VerifierError
				if errors.As(err, &verr) && len(verr.Log) > 0 {
					t.Errorf("%s: the verifier refused it: %s", name, verr.Log[len(verr.Log)-1])
					continue
				}
				t.Fatalf("%s: %v", name, err)
			}
			m := processedRe.FindStringSubmatch(coll.Programs[name].VerifierLog)
			coll.Close()
			if m == nil {
				t.Fatalf("%s: no instruction count in the verifier's log", name)
			}
			n, _ := strconv.Atoi(m[1])
			t.Logf("%s: %d instructions processed", name, n)
			if n > verifierBudget {
				t.Errorf("%s: the verifier processed %d instructions, over the %d this test allows (its limit is 1000000)", name, n, verifierBudget)
			}
		}
	}
}
