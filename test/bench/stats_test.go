package bench

import (
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/imdsguard/imdsguard/internal/policy"
)

// These run in `make test` (no lab, no root): they check the arithmetic and
// the report's shape, not the machine.

func TestPercentile(t *testing.T) {
	xs := []float64{5, 1, 4, 2, 3}
	for _, c := range []struct{ p, want float64 }{{0, 1}, {50, 3}, {100, 5}, {25, 2}, {90, 4.6}} {
		if got := Percentile(xs, c.p); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("Percentile(%v) = %v, want %v", c.p, got, c.want)
		}
	}
	if !math.IsNaN(Percentile(nil, 50)) {
		t.Error("Percentile of nothing is not NaN")
	}
	if got := PercentileNs([]int64{1000, 3000}, 50); got != 2 {
		t.Errorf("PercentileNs = %v µs, want 2", got)
	}
}

func TestSummarize(t *testing.T) {
	s := Summarize([]float64{3, math.NaN(), 1, 2})
	if s.N != 3 || s.Median != 2 || s.Min != 1 || s.Max != 3 {
		t.Fatalf("Summarize = %+v", s)
	}
	if got := s.Fmt(1); got != "2.0 (1.0–3.0)" {
		t.Errorf("Fmt = %q", got)
	}
	if got := Summarize([]float64{-1.5, 2.5}).FmtSigned(1); got != "+0.5 (-1.5 … +2.5)" {
		t.Errorf("FmtSigned = %q", got)
	}
	if got := Summarize(nil).Fmt(0); got != "n/a" {
		t.Errorf("empty Fmt = %q", got)
	}
	if got := Summarize([]float64{12345.6}).Fmt(0); got != "12 346" {
		t.Errorf("Fmt of one value = %q", got)
	}
}

func TestRatiosDiffsPairByRound(t *testing.T) {
	r := Ratios([]float64{2, 9, 4}, []float64{1, 3})
	if len(r) != 2 || r[0] != 2 || r[1] != 3 {
		t.Errorf("Ratios = %v", r)
	}
	d := Diffs([]float64{5, 1}, []float64{2, 2})
	if d[0] != 3 || d[1] != -1 {
		t.Errorf("Diffs = %v", d)
	}
}

func TestGroupThousands(t *testing.T) {
	for in, want := range map[int64]string{0: "0", 999: "999", 1000: "1 000", 1234567: "1 234 567", -10000: "-10 000"} {
		if got := groupThousands(in); got != want {
			t.Errorf("groupThousands(%d) = %q, want %q", in, got, want)
		}
	}
}

// The policies of section 6 must be valid: unique names, no rule shadowed
// by an earlier one, at most 1000 rules.
func TestScalePolicyValid(t *testing.T) {
	for _, n := range []int{0, 1, 100, 1000} {
		for variant := range 2 {
			src := scalePolicy("/imdsguard-lab-ig000000", n, variant)
			pol, err := policy.Parse([]byte(src), "scale.yaml")
			if err != nil {
				t.Fatalf("%d rules: %v", n, err)
			}
			if len(pol.Rules) != n {
				t.Fatalf("%d rules: parsed %d", n, len(pol.Rules))
			}
			c, err := pol.Compile()
			if err != nil {
				t.Fatalf("%d rules: %v", n, err)
			}
			if n == 0 {
				continue
			}
			// Every cgroup w00000…w09999 gets exactly one rule.
			for _, i := range []int{0, 1, 42, 999, 9999} {
				cands, err := c.Candidates(fmt.Sprintf("/imdsguard-lab-ig000000/w%05d", i))
				if err != nil || len(cands) != 1 || int(cands[0]) != i%n {
					t.Errorf("%d rules: cgroup %d: candidates %v, %v", n, i, cands, err)
				}
			}
		}
	}
}

func TestReportMarkdown(t *testing.T) {
	r := NewReport(true)
	r.Add(&Section{Num: 2, Title: sectionTitles[2], Method: "how",
		Tables: []Table{{Header: []string{"a", "b|c"}, Rows: [][]string{{"1", "2"}}}},
		Goals:  []Goal{{What: "w", Target: "< 1", Measured: "2", Met: false, Note: "why"}}})
	md := r.Markdown("## Reasons and plans for missed goals\n\nnotes here")
	for _, want := range []string{
		"# imdsguard benchmarks", "## Machine", "## Goals",
		"| 2 | w | < 1 | 2 | **missed** — why |",
		"## 0. Per-run cost", "Not measured in this run",
		"## 2. IMDS request latency", "| a | b\\|c |", "notes here",
		"bench-short",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
}
