package bench

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Report is what `make bench` writes to docs/benchmarks.md: a generated
// part (machine, one table per section, the goals) and the hand-written
// notes (notes.md), which regenerating keeps.
type Report struct {
	mu       sync.Mutex
	Quick    bool
	Started  time.Time
	Finished time.Time
	Machine  [][2]string
	Sections map[int]*Section
}

// Section is one numbered part of the list.
type Section struct {
	Num    int
	Title  string
	Method string // markdown: how it was measured
	Tables []Table
	Goals  []Goal
	After  string // markdown after the tables
}

// Table is a markdown table with an optional caption line above it.
type Table struct {
	Caption string
	Header  []string
	Rows    [][]string
}

// Goal is one target of the issue and whether this run met it.
type Goal struct {
	What     string
	Target   string
	Measured string
	Met      bool
	Note     string // shown next to met/missed
}

// MetString renders the verdict column.
func (g Goal) MetString() string {
	s := "**missed**"
	if g.Met {
		s = "met"
	}
	if g.Note != "" {
		s += " — " + g.Note
	}
	return s
}

// NewReport starts a report.
func NewReport(quick bool) *Report {
	return &Report{Quick: quick, Started: time.Now(), Sections: map[int]*Section{}}
}

// Add stores a section (a later Add of the same number replaces it).
func (r *Report) Add(s *Section) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Sections[s.Num] = s
}

// Has reports whether section n was measured.
func (r *Report) Has(n int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.Sections[n] != nil
}

// derived holds figures one benchmark measures for another section's
// cross-check; addDerived uses them once every benchmark has run.
var derived struct {
	perConnNs      []float64   // section 0: imdsguard's programs per new connection, per round
	perConnFloorNs []float64   // the empty programs' share of that
	connsPerSec    []namedRate // section 1: no-guard connections per second, by traffic
}

type namedRate struct {
	name string
	rate float64
}

// addDerived adds to section 1 the ratio the kernel's own figures predict:
// the programs run inline in the connecting thread, so a connection that
// took 1/rate seconds without the guard takes that plus their time with it.
// Unlike wall-clock rounds it is not blurred by the machine's noise.
func addDerived(r *Report) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.Sections[1]
	if s == nil || len(derived.perConnNs) == 0 || len(derived.connsPerSec) == 0 {
		return
	}
	per, fl := Summarize(derived.perConnNs), Summarize(derived.perConnFloorNs)
	t := Table{
		Caption: "**Kernel-derived estimate** (section 0's exact program times per connection against this section's no-guard rate)",
		Header:  []string{"traffic", "a connection without guard", "imdsguard's programs per connection", "estimated ratio", "same, without the empty programs' floor (the statistics' own cost)", "goal", "met?"},
	}
	for _, nr := range derived.connsPerSec {
		name, rate := nr.name, nr.rate
		if rate <= 0 {
			continue
		}
		connNs := 1e9 / rate
		ratio := connNs / (connNs + per.Median)
		ratioOwn := connNs / (connNs + per.Median - fl.Median)
		g := Goal{What: name + " (kernel-derived)", Target: "ratio ≥ 0.99", Measured: fmt.Sprintf("%.4f", ratio), Met: ratio >= 0.99}
		if !g.Met && ratioOwn >= 0.99 {
			g.Note = fmt.Sprintf("%.4f without the statistics' floor", ratioOwn)
		}
		s.Goals = append(s.Goals, g)
		t.Rows = append(t.Rows, []string{name, fmt.Sprintf("%.1f µs", connNs/1e3), per.Fmt(0) + " ns", fmt.Sprintf("%.4f", ratio),
			fmt.Sprintf("%.4f (programs %s ns)", ratioOwn, fmtNum(per.Median-fl.Median, 0)), g.Target, g.MetString()})
	}
	s.Tables = append(s.Tables, t)
	s.After += `
The estimate adds the programs' own run time (connect4 once, sockops about
five times, egress once per packet: three packets) to the time a connection
takes without the guard. It leaves out the kernel's dispatch around each run
(small) and includes the statistics' two clock reads per run (not paid in
production; the last columns take the empty programs' cost out).`
}

// sectionTitles are the list; a section the run did not produce is
// still listed, as not measured.
var sectionTitles = []string{
	"Per-run cost of each program (kernel statistics)",
	"Unrelated traffic from a guarded cgroup",
	"IMDS request latency",
	"Time to refuse",
	"Event pipeline",
	"Footprint",
	"Policy scale",
}

func escapeCell(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

func (t Table) markdown(b *strings.Builder) {
	if t.Caption != "" {
		fmt.Fprintf(b, "%s\n\n", t.Caption)
	}
	row := func(cells []string) {
		b.WriteString("|")
		for _, c := range cells {
			fmt.Fprintf(b, " %s |", escapeCell(c))
		}
		b.WriteString("\n")
	}
	row(t.Header)
	b.WriteString("|")
	for range t.Header {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	for _, r := range t.Rows {
		row(r)
	}
	b.WriteString("\n")
}

// Markdown renders the whole report; notes is the hand-written part.
func (r *Report) Markdown(notes string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	b.WriteString("# imdsguard benchmarks\n\n")
	b.WriteString("<!-- Generated by `sudo make bench` (test/bench): do not edit by hand. The last section comes from test/bench/notes.md. -->\n\n")
	kind := "`sudo make bench` (full run)"
	if r.Quick {
		kind = "`sudo make bench-short` (small counts: figures are indicative only)"
	}
	fmt.Fprintf(&b, "Produced by %s on %s in %s. Regenerate with `sudo make bench`.\n\n",
		kind, r.Started.UTC().Format("2006-01-02 15:04 MST"), r.Finished.Sub(r.Started).Round(time.Second))
	b.WriteString(`Everything runs in a disposable network-namespace lab (test/lab): a *node*
namespace that plays the host, an *imds* namespace holding 169.254.169.254 and
[fd00:ec2::254] with imdsguard's test IMDS server, and a *pod* namespace routed
through the node. Clients run inside the lab's child cgroup, where imdsguard's
programs are attached (never the root cgroup); the daemon is the real
` + "`imdsguard run`" + ` with its default policy in enforce mode, its events written to
/dev/null.

How to read the figures: the machine is shared and noisy (two runs of the same
thing differ by ±10% and more), so each figure is the **median over rounds**,
followed by the **(min–max) over the rounds**. Configurations are measured in
interleaved rounds (A B B A …) in one run; a comparison (ratio or added time)
is computed per round against the same round's baseline and its median is
reported. Latency percentiles are taken per round, then their median is
reported. Kernel figures come from BPF_ENABLE_STATS (` + "`run_time_ns / run_cnt`" + ` of
each program), which are exact but include the cost of the statistics
themselves (two clock reads per run): see the empty-program floor in section 0.

`)
	b.WriteString("## Machine\n\n")
	Table{Header: []string{"", ""}, Rows: func() [][]string {
		var rows [][]string
		for _, kv := range r.Machine {
			rows = append(rows, []string{kv[0], kv[1]})
		}
		return rows
	}()}.markdown(&b)

	b.WriteString("## Goals\n\n")
	goals := Table{Header: []string{"section", "goal", "target", "measured (median, min–max)", "met?"}}
	for i := range sectionTitles {
		s := r.Sections[i]
		if s == nil {
			continue
		}
		for _, g := range s.Goals {
			goals.Rows = append(goals.Rows, []string{fmt.Sprint(i), g.What, g.Target, g.Measured, g.MetString()})
		}
	}
	goals.markdown(&b)

	for i, title := range sectionTitles {
		fmt.Fprintf(&b, "## %d. %s\n\n", i, title)
		s := r.Sections[i]
		if s == nil {
			b.WriteString("Not measured in this run (the benchmark was not selected or failed; see the output of `make bench`).\n\n")
			continue
		}
		if s.Method != "" {
			b.WriteString(strings.TrimSpace(s.Method) + "\n\n")
		}
		for _, t := range s.Tables {
			t.markdown(&b)
		}
		if s.After != "" {
			b.WriteString(strings.TrimSpace(s.After) + "\n\n")
		}
	}
	b.WriteString(strings.TrimSpace(notes) + "\n")
	return b.String()
}

// DescribeMachine fills in the machine table: CPU, memory, kernel, Go,
// the commit measured, and what could skew BPF figures.
func (r *Report) DescribeMachine(repo string) {
	var rows [][2]string
	model, cpus, mhz := cpuInfo()
	rows = append(rows, [2]string{"CPU", fmt.Sprintf("%s, %d logical CPUs%s", model, cpus, mhz)})
	if mem := memTotal(); mem != "" {
		rows = append(rows, [2]string{"memory", mem})
	}
	if v := firstLine("/sys/class/dmi/id/sys_vendor") + " " + firstLine("/sys/class/dmi/id/product_name"); strings.TrimSpace(v) != "" {
		rows = append(rows, [2]string{"platform", strings.TrimSpace(v)})
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		rows = append(rows, [2]string{"kernel", unix.ByteSliceToString(u.Release[:]) + " " + unix.ByteSliceToString(u.Machine[:])})
	}
	rows = append(rows, [2]string{"Go", runtime.Version()})
	if rev := gitDescribe(repo); rev != "" {
		rows = append(rows, [2]string{"imdsguard", rev})
	}
	jit := firstLine("/proc/sys/net/core/bpf_jit_enable")
	switch jit {
	case "1":
		jit = "on"
	case "0":
		jit = "off (interpreter: kernel figures are far higher than with the JIT)"
	}
	rows = append(rows, [2]string{"BPF JIT", jit})
	rows = append(rows, [2]string{"load average at start", firstLine("/proc/loadavg")})
	r.mu.Lock()
	r.Machine = rows
	r.mu.Unlock()
}

// AddMachine appends a row to the machine table (e.g. the run's duration).
func (r *Report) AddMachine(k, v string) {
	r.mu.Lock()
	r.Machine = append(r.Machine, [2]string{k, v})
	r.mu.Unlock()
}

func cpuInfo() (model string, cpus int, mhz string) {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown", runtime.NumCPU(), ""
	}
	defer f.Close()
	var freqs []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch k {
		case "processor":
			cpus++
		case "model name":
			if model == "" {
				model = v
			}
		case "cpu MHz":
			freqs = append(freqs, v)
		}
	}
	if model == "" {
		model = "unknown"
	}
	if len(freqs) > 0 {
		slices.Sort(freqs)
		mhz = fmt.Sprintf(", %s MHz (as reported)", strings.Split(freqs[len(freqs)-1], ".")[0])
	}
	return model, cpus, mhz
}

func memTotal() string {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var kb int64
		if _, err := fmt.Sscanf(sc.Text(), "MemTotal: %d kB", &kb); err == nil {
			return fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
		}
	}
	return ""
}

func firstLine(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	line, _, _ := strings.Cut(string(b), "\n")
	return strings.TrimSpace(line)
}

func gitDescribe(repo string) string {
	cmd := exec.Command("git", "-C", repo, "describe", "--tags", "--always", "--dirty")
	out, err := cmd.Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// repoRoot is the module root, two levels above this package.
func repoRoot() string {
	wd, err := os.Getwd()
	if err != nil {
		return "."
	}
	return filepath.Clean(filepath.Join(wd, "..", ".."))
}
