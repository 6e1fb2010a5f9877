package controller

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/imdsguard/imdsguard/internal/cloud"
	"github.com/imdsguard/imdsguard/internal/kernelpolicy"
	"github.com/imdsguard/imdsguard/internal/policy"
)

// The default policy's plan: no cgroup rules to scan for, and a table that
// drops forwarded packets to both IMDS endpoints (reject and audit follow
// the policy).
func TestPlanOfTheDefaultPolicyAndItsTable(t *testing.T) {
	for _, tc := range []struct {
		mode, action  string
		audit, reject bool
	}{
		{"enforce", "", false, false},
		{"audit", "", true, false},
		{"enforce", policy.NftablesReject, false, true},
	} {
		pol, err := policy.LoadOrDefault("", tc.mode, cloud.AWS)
		if err != nil {
			t.Fatal(err)
		}
		if tc.action != "" {
			pol.NftablesAction = tc.action
		}
		plan, err := MakePlan(pol, "/nonexistent") // no cgroup rule: the tree is not read
		if err != nil {
			t.Fatal(err)
		}
		if len(plan.Cgroups) != 1 || plan.Hash == "" {
			t.Errorf("plan %+v: want only the default rule list, and a hash", plan)
		}
		// (the table's NFLOG group is nftlayer's: TestWantBecomesTheTableConfig)
		got := syncedWant(t, plan)
		want := []netip.AddrPort{netip.MustParseAddrPort("169.254.169.254:80"), netip.MustParseAddrPort("[fd00:ec2::254]:80")}
		if !got.On || !slices.Equal(got.Endpoints, want) || got.Audit != tc.audit || got.Reject != tc.reject || got.AllowedCgroups != nil {
			t.Errorf("mode %s action %q: table %+v, want endpoints %v audit %v reject %v", tc.mode, tc.action, got, want, tc.audit, tc.reject)
		}
	}
}

// Events name rules by the generation their verdict came from; the
// overflow slot has its own name.
func TestRuleNamesFollowTheGeneration(t *testing.T) {
	e := &Controller{names: [2][]string{{"a", "b"}, {"c"}}}
	for _, tc := range []struct {
		gen  uint8
		idx  uint16
		want string
	}{
		{0, 1, "b"}, {1, 0, "c"}, {1, 1, ""}, {2, 0, "a"}, {0, kernelpolicy.OverflowRule, policy.OverflowRuleName},
	} {
		if got := e.RuleName(tc.gen, tc.idx); got != tc.want {
			t.Errorf("RuleName(%d, %d) = %q, want %q", tc.gen, tc.idx, got, tc.want)
		}
	}
}
