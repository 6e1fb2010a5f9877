package bench

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/internal/cgroupfs"
	"github.com/imdsguard/imdsguard/internal/controller"
	"github.com/imdsguard/imdsguard/internal/policy"
	"github.com/imdsguard/imdsguard/test/lab"
)

// scalePolicy writes a policy with n rules (n a power of ten up to 10^5)
// over cgroups named w00000, w00001, … under the lab cgroup: rule i allows
// IMDSv1 in the cgroups whose index ends in i, so every cgroup gets a rule
// list of its own (the most the kernel maps have to hold) and no rule
// shadows another. variant changes only the names, so that a reload has
// something to do.
func scalePolicy(cgroupRel string, n, variant int) string {
	var sb strings.Builder
	sb.WriteString("apiVersion: imdsguard.io/v1\nkind: Policy\nrules:")
	if n == 0 {
		sb.WriteString(" []\n")
		return sb.String()
	}
	sb.WriteString("\n")
	digits := len(fmt.Sprint(n - 1))
	if n == 1 {
		digits = 0
	}
	for i := range n {
		suffix := ""
		if digits > 0 {
			suffix = fmt.Sprintf("%0*d", digits, i)
		}
		glob := cgroupRel + "/w" + strings.Repeat("?", 5-digits) + suffix
		fmt.Fprintf(&sb, "  - name: r%04d-v%d\n    match: {cgroup: %q}\n    allowV1: true\n", i, variant, glob)
	}
	return sb.String()
}

// writeAtomically replaces path's content in one rename.
func writeAtomically(path, content string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// logTime finds the count-th log line containing msg and returns its time.
func logTime(stderr, msg string, count int) (time.Time, bool) {
	seen := 0
	for _, line := range strings.Split(stderr, "\n") {
		if !strings.Contains(line, msg) {
			continue
		}
		seen++
		if seen < count {
			continue
		}
		var v struct {
			Time string `json:"time"`
		}
		if json.Unmarshal([]byte(line), &v) != nil {
			return time.Time{}, false
		}
		t, err := time.Parse(time.RFC3339Nano, v.Time)
		return t, err == nil
	}
	return time.Time{}, false
}

// BenchmarkPolicyScale is section 6: start-up and reload with 1, 100 and
// 1000 rules while 10 000 cgroups exist.
func BenchmarkPolicyScale(b *testing.B) {
	sc := currentScale()
	l := lab.New(b)
	mount := l.CgroupMount

	// The cgroups, under the lab's cgroup only; removed at the end, also on
	// failure (and the lab removes its tree in any case).
	var made []string
	b.Cleanup(func() {
		for i := len(made) - 1; i >= 0; i-- {
			if err := syscall.Rmdir(made[i]); err != nil && !errors.Is(err, os.ErrNotExist) {
				b.Errorf("removing %s: %v", made[i], err)
			}
		}
	})
	mk := time.Now()
	for i := range sc.scaleCgroups {
		dir := filepath.Join(l.Cgroup, fmt.Sprintf("w%05d", i))
		if err := os.Mkdir(dir, 0o755); err != nil {
			b.Fatalf("creating cgroup %d: %v", i, err)
		}
		made = append(made, dir)
	}
	mkTime := time.Since(mk)

	// The policy path is a symlink into another directory: the daemon
	// watches the symlink's directory, so rewriting the target does not
	// trigger a file-change reload, and each SIGHUP is exactly one reload.
	watched, store := b.TempDir(), b.TempDir()
	target := filepath.Join(store, "policy.yaml")
	path := filepath.Join(watched, "policy.yaml")
	if err := os.Symlink(target, path); err != nil {
		b.Fatal(err)
	}

	tree, err := cgroupfs.Scan(mount)
	if err != nil {
		b.Fatal(err)
	}
	var reads []float64
	for range sc.planRepeats {
		start := time.Now()
		if _, err := cgroupfs.Scan(mount); err != nil {
			b.Fatal(err)
		}
		reads = append(reads, time.Since(start).Seconds()*1e3)
	}
	t := Table{Header: []string{"rules", "cgroups with a rule list of their own", "compile (parse, match against the tree)",
		"start-up to enforcing", "reload (SIGHUP to \"policy reloaded\")", "daemon CPU when idle"}}
	var goals []Goal
	var idleFloor float64
	for _, n := range append([]int{0}, sc.scaleRules...) {
		variant := 0
		content := scalePolicy(l.CgroupRel, n, variant)
		if err := writeAtomically(target, content); err != nil {
			b.Fatal(err)
		}

		// In process: what the daemon does before it writes any map.
		var compile []float64
		entries := 0
		for range sc.planRepeats {
			start := time.Now()
			pol, err := policy.Parse([]byte(content), "policy.yaml")
			if err != nil {
				b.Fatalf("%d rules: %v", n, err)
			}
			plan, err := controller.MakePlanForTree(pol, tree, nil)
			if err != nil {
				b.Fatalf("%d rules: %v", n, err)
			}
			compile = append(compile, time.Since(start).Seconds()*1e3)
			entries = len(plan.Cgroups) - 1 // id 0 is the default list
		}

		var startup, reload []float64
		var idle float64
		for s := range sc.scaleStarts {
			g := startGuard(b, l, "--policy", path)
			startup = append(startup, g.startup.Seconds()*1e3)
			if s == 0 {
				// past the start's one-off work (the first reads and
				// watches of the tree)
				time.Sleep(3 * time.Second)
				cpu0, t0 := cpuSeconds(g.pid), time.Now()
				window := sc.idleCPU
				if n == sc.scaleRules[len(sc.scaleRules)-1] {
					window = sc.scaleIdle // includes a full read of the tree
				}
				time.Sleep(window)
				idle = 100 * (cpuSeconds(g.pid) - cpu0) / time.Since(t0).Seconds()
			}
			for k := 1; n > 0 && k <= sc.scaleReloads; k++ {
				variant++
				if err := writeAtomically(target, scalePolicy(l.CgroupRel, n, variant)); err != nil {
					b.Fatal(err)
				}
				t0 := time.Now()
				if err := g.Signal(syscall.SIGHUP); err != nil {
					b.Fatal(err)
				}
				deadline := time.Now().Add(2 * time.Minute)
				for {
					if at, ok := logTime(g.Stderr(), `"msg":"policy reloaded"`, k); ok {
						reload = append(reload, at.Sub(t0).Seconds()*1e3)
						break
					}
					if strings.Contains(g.Stderr(), "policy reload refused") || time.Now().After(deadline) {
						b.Fatalf("%d rules: reload %d did not complete; stderr:\n%s", n, k, g.Stderr())
					}
					time.Sleep(5 * time.Millisecond)
				}
			}
			g.stop(b)
		}
		label := fmt.Sprint(n)
		if n == 0 {
			label = "0 (default policy)"
		}
		rl := "—"
		if len(reload) > 0 {
			rl = Summarize(reload).Fmt(0) + " ms"
		}
		t.Rows = append(t.Rows, []string{label, groupThousands(int64(entries)), Summarize(compile).Fmt(1) + " ms",
			Summarize(startup).Fmt(0) + " ms", rl, fmt.Sprintf("%.2f%%", idle)})
		if n == 0 {
			idleFloor = idle
		}
		if n == sc.scaleRules[len(sc.scaleRules)-1] {
			goals = append(goals, scaleGoals(n, sc, Summarize(compile), idle, idleFloor)...)
		}
	}
	report.Add(&Section{Num: 6, Title: sectionTitles[6], Tables: []Table{t}, Goals: goals, Method: fmt.Sprintf(`
%d cgroups exist under the lab's cgroup (created in %s, removed afterwards),
besides the machine's own. Rule i of n allows IMDSv1 in the cgroups whose
name ends in i (`+"`/imdsguard-lab-…/w??123`"+`), so every one of the cgroups gets a
rule list of its own in the kernel's cgroup map — the worst case. Start-up
runs the daemon with the policy file (%d start(s) per row): exec to the
"enforcing" log line, which includes attaching to a cgroup with %d
descendants. Reload: a rewritten policy (every rule renamed), then SIGHUP,
until the daemon's "policy reloaded" log line (%d per start). Compile is the
same work done in the bench process (policy.Parse and controller.MakePlanForTree
against the tree read once, as a reload does with the tree the daemon
follows; %d time(s)), before any map is written. Reading the tree
(cgroupfs.Scan, which the start-up does once more) took %s ms. Idle CPU: the daemon's utime+stime over
%s from 3 s after start (%s for the largest policy: the daemon follows the tree by
its inotify events and reads it in full only every %s, so the window
holds one full read); the default policy's row, which has no cgroup rule
and does not follow the tree, is the floor.`,
		sc.scaleCgroups, mkTime.Round(time.Millisecond), sc.scaleStarts, sc.scaleCgroups, sc.scaleReloads, sc.planRepeats,
		Summarize(reads).Fmt(1), sc.idleCPU, sc.scaleIdle, controller.DefaultFullRescan)})
}

// scaleGoals judges the largest policy's compile and idle CPU.
func scaleGoals(n int, sc scale, compile Summary, idle, floor float64) []Goal {
	what := fmt.Sprintf("%d rules × %s cgroups", n, groupThousands(int64(sc.scaleCgroups)))
	return []Goal{
		{What: "policy compile, " + what, Target: "≤ 300 ms", Measured: compile.Fmt(1) + " ms", Met: compile.Median <= 300},
		{What: "daemon CPU when idle, " + what, Target: "≤ 1% of a core", Measured: fmt.Sprintf("%.2f%% (floor, no cgroup rule: %.2f%%)", idle, floor), Met: idle <= 1},
	}
}
