package suggest

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/bpf"
	"github.com/imdsguard/imdsguard/internal/events"
	"github.com/imdsguard/imdsguard/internal/ocsf"
	"github.com/imdsguard/imdsguard/internal/policy"
)

// testNow is the clock of every test: --since counts back from it.
func testNow() time.Time { return time.Date(2025, 6, 2, 0, 0, 0, 0, time.UTC) }

func at(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}

func imdsEndpoint() netip.AddrPort { return netip.MustParseAddrPort("169.254.169.254:80") }

// ev builds an audit event as the daemon reports it.
func ev(when string, reason bpf.Reason, cgroup, comm string, opts ...func(*events.Event)) *events.Event {
	e := &events.Event{
		Time: at(when), Kind: bpf.KindRequest, Action: bpf.ActionAudit, Reason: reason, Endpoint: imdsEndpoint(),
		Method: "GET", Path: "/latest/meta-data/", PID: 100, Comm: comm, Cgroup: cgroup, Count: 1,
		HostNetns: true, Hostname: "node-1", Cloud: "aws",
	}
	for _, o := range opts {
		o(e)
	}
	return e
}

func count(n uint64) func(*events.Event) { return func(e *events.Event) { e.Count = n } }
func path(p string) func(*events.Event)  { return func(e *events.Event) { e.Path = p } }
func exe(p string) func(*events.Event)   { return func(e *events.Event) { e.Exe = p } }
func uidOf(u uint32) func(*events.Event) { return func(e *events.Event) { e.UID = u } }
func action(a bpf.Action) func(*events.Event) {
	return func(e *events.Event) { e.Action = a }
}

// connect makes it a connect event from another network namespace.
func connect(e *events.Event) {
	e.Kind, e.Method, e.Path, e.HostNetns = bpf.KindConnect, "", "", false
}

// pod fills what the daemon's enrichment adds for a pod's container.
func pod(namespace, name, container, podUID string) func(*events.Event) {
	return func(e *events.Event) {
		e.Namespace, e.Pod, e.Container, e.PodUID = namespace, name, container, podUID
	}
}

// jsonLines renders events with the daemon's own encoder.
func jsonLines(evs ...*events.Event) string {
	var b strings.Builder
	for _, e := range evs {
		b.Write(events.EncodeJSON(e.Time, e))
		b.WriteByte('\n')
	}
	return b.String()
}

// ocsfLines renders events as the daemon's OCSF output does.
func ocsfLines(t *testing.T, evs ...*events.Event) string {
	var b strings.Builder
	for _, e := range evs {
		out, err := ocsf.Render(e, ocsf.Product{Version: "test"})
		if err != nil {
			t.Fatal(err)
		}
		b.Write(out)
		b.WriteByte('\n')
	}
	return b.String()
}

// run suggests from one input named events.json.
func run(t *testing.T, cfg Config, input string) *Result {
	t.Helper()
	cfg.Now = testNow
	cfg.Inputs = []string{"events.json"}
	res, err := Suggest(cfg, []Source{{Name: "events.json", R: strings.NewReader(input)}})
	if err != nil {
		t.Fatalf("Suggest: %v", err)
	}
	return res
}

// rulesOf parses the output as imdsguard check does and returns its rules.
func rulesOf(t *testing.T, out []byte) *policy.Policy {
	t.Helper()
	pol, err := policy.Parse(out, "out.yaml")
	if err != nil {
		t.Fatalf("the output does not parse as a policy: %v\n%s", err, out)
	}
	return pol
}

// rule is a policy rule in short, for comparing.
type rule struct {
	name, cgroup, comm       string
	namespace, pod, ctr      string
	v1, netns                bool
	deny                     bool
	credentialReadsPerMinute int
}

func short(rs []policy.Rule) []rule {
	out := make([]rule, len(rs))
	for i, r := range rs {
		m := r.Match
		out[i] = rule{r.Name, m.Cgroup, m.Comm, m.Namespace, m.Pod, m.Container, r.AllowV1, r.AllowNonHostNetns, r.Deny, r.CredentialReadsPerMinute}
	}
	return out
}

func wantRules(t *testing.T, out []byte, want []rule) *policy.Policy {
	t.Helper()
	pol := rulesOf(t, out)
	got := short(pol.Rules)
	if len(got) != len(want) {
		t.Fatalf("got %d rules, want %d:\n got %+v\nwant %+v\n%s", len(got), len(want), got, want, out)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("rules[%d] = %+v\n        want %+v", i, got[i], want[i])
		}
	}
	if t.Failed() {
		t.Logf("output:\n%s", out)
	}
	return pol
}

// wantContains checks that the output says each part, comments read as
// running text: wrapping does not matter, the words do.
func wantContains(t *testing.T, out []byte, parts ...string) {
	t.Helper()
	text := flat(out)
	for _, p := range parts {
		if !strings.Contains(text, p) {
			t.Errorf("output lacks %q", p)
		}
	}
	if t.Failed() {
		t.Logf("output:\n%s", out)
	}
}

// flat joins the output's lines, without indentation and comment marks,
// with single spaces.
func flat(out []byte) string {
	var words []string
	for _, l := range strings.Split(string(out), "\n") {
		l = strings.TrimLeft(strings.TrimSpace(l), "# ")
		if l != "" {
			words = append(words, l)
		}
	}
	return strings.Join(words, " ")
}
