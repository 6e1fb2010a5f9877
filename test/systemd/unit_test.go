package systemd

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// unitFile is a systemd unit file as systemd reads it: sections of
// KEY=VALUE assignments, '#' and ';' comments, and lines continued with a
// trailing backslash.
type unitFile struct {
	path    string
	entries []unitEntry
}

type unitEntry struct {
	section, key, value string
	line                int
}

func parseUnit(path string) (*unitFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	u := &unitFile{path: path}
	section := ""
	sc := bufio.NewScanner(f)
	n := 0
	var pending string // a continued line so far
	start := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if pending == "" && (line == "" || line[0] == '#' || line[0] == ';') {
			continue
		}
		if pending != "" && (strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";")) {
			continue // systemd skips comments inside a continuation
		}
		if pending == "" {
			start = n
		}
		if cont, ok := strings.CutSuffix(line, `\`); ok {
			pending += cont + " "
			continue
		}
		line, pending = pending+line, ""
		if strings.HasPrefix(line, "[") {
			if !strings.HasSuffix(line, "]") {
				return nil, fmt.Errorf("%s:%d: bad section header %q", path, start, line)
			}
			section = line[1 : len(line)-1]
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok || section == "" {
			return nil, fmt.Errorf("%s:%d: not an assignment in a section: %q", path, start, line)
		}
		u.entries = append(u.entries, unitEntry{section, strings.TrimSpace(key), strings.TrimSpace(value), start})
	}
	if pending != "" {
		return nil, fmt.Errorf("%s: continuation at the end of the file", path)
	}
	return u, sc.Err()
}

// values returns every assignment of section.key, in order.
func (u *unitFile) values(section, key string) []string {
	var out []string
	for _, e := range u.entries {
		if e.section == section && e.key == key {
			out = append(out, e.value)
		}
	}
	return out
}

// value returns the last assignment (the one that counts for single-valued
// settings).
func (u *unitFile) value(section, key string) string {
	v := u.values(section, key)
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

// list returns a list-valued setting: the words of every assignment, an
// empty assignment clearing what came before.
func (u *unitFile) list(section, key string) []string {
	var out []string
	for _, v := range u.values(section, key) {
		if v == "" {
			out = nil
			continue
		}
		out = append(out, strings.Fields(v)...)
	}
	return out
}

// execArgv splits an Exec*= line into words, without its prefixes
// ("-", "@", "+", "!", ":"). The unit's command lines use no quoting.
func execArgv(line string) []string {
	argv := strings.Fields(line)
	if len(argv) > 0 {
		argv[0] = strings.TrimLeft(argv[0], "-@+!:")
	}
	return argv
}

func loadUnit(t testing.TB) *unitFile {
	t.Helper()
	u, err := parseUnit(unitPath)
	if err != nil {
		t.Fatalf("parsing the unit: %v", err)
	}
	return u
}

// unitCaps is the unit's capability set (CapabilityBoundingSet=).
func unitCaps(t testing.TB) []string {
	t.Helper()
	caps := loadUnit(t).list("Service", "CapabilityBoundingSet")
	if len(caps) == 0 {
		t.Fatal("the unit has no CapabilityBoundingSet=")
	}
	return caps
}

// capNames are the capabilities Linux 6.x knows. systemd-analyze verify
// says nothing about a misspelt one; systemd would ignore it.
var capNames = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
	"CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
	"CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
	"CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
	"CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
	"CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
	"CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
	"CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
}

// The properties the daemon, the boot ordering and the docs rely on.
func TestUnitInvariants(t *testing.T) {
	u := loadUnit(t)
	want := func(section, key, value string) {
		t.Helper()
		if got := u.value(section, key); got != value {
			t.Errorf("[%s] %s=%q, want %q", section, key, got, value)
		}
	}
	contains := func(section, key string, values ...string) {
		t.Helper()
		got := u.list(section, key)
		for _, v := range values {
			if !slices.Contains(got, v) {
				t.Errorf("[%s] %s=%q does not contain %s", section, key, got, v)
			}
		}
	}

	// Readiness is what holds back the units ordered after it.
	want("Service", "Type", "notify")
	want("Service", "NotifyAccess", "main")
	want("Service", "Restart", "always")
	want("Service", "RestartSec", "1s")
	contains("Unit", "Before", "containerd.service", "kubelet.service", "docker.service", "crio.service", "network-pre.target")
	contains("Unit", "RequiresMountsFor", "/sys/fs/bpf")
	contains("Install", "WantedBy", "multi-user.target")

	start := execArgv(u.value("Service", "ExecStart"))
	if len(start) < 2 || start[0] != "/usr/local/bin/imdsguard" || start[1] != "run" {
		t.Errorf("ExecStart=%q, want /usr/local/bin/imdsguard run …", start)
	}
	policy := ""
	for i, a := range start {
		if a == "--policy" && i+1 < len(start) {
			policy = start[i+1]
		} else if v, ok := strings.CutPrefix(a, "--policy="); ok {
			policy = v
		}
	}
	if policy != "/etc/imdsguard/policy.yaml" {
		t.Errorf("ExecStart policy %q, want /etc/imdsguard/policy.yaml", policy)
	}
	// The daemon's default --on-exit keep is what keeps enforcement through
	// stop and restart; the unit must not turn it off.
	if slices.ContainsFunc(start, func(a string) bool { return strings.HasPrefix(a, "--on-exit") }) {
		t.Errorf("ExecStart=%q sets --on-exit: the unit relies on the default (keep)", start)
	}
	if got := execArgv(u.value("Service", "ExecReload")); !slices.Equal(got, []string{"/bin/kill", "-HUP", "$MAINPID"}) {
		t.Errorf("ExecReload=%q, want /bin/kill -HUP $MAINPID (the daemon reloads on SIGHUP)", got)
	}

	want("Service", "NoNewPrivileges", "yes")
	want("Service", "ProtectSystem", "strict")
	contains("Service", "ReadWritePaths", "/sys/fs/bpf")

	bounding := u.list("Service", "CapabilityBoundingSet")
	ambient := u.list("Service", "AmbientCapabilities")
	slices.Sort(bounding)
	slices.Sort(ambient)
	if len(bounding) == 0 || !slices.Equal(bounding, ambient) {
		t.Errorf("CapabilityBoundingSet=%q and AmbientCapabilities=%q must be the same, non-empty set", bounding, ambient)
	}
	for _, c := range bounding {
		if !slices.Contains(capNames, c) { // "~CAP_X" would invert the set
			t.Errorf("CapabilityBoundingSet: %q is not a capability name", c)
		}
	}

	fams := u.list("Service", "RestrictAddressFamilies")
	slices.Sort(fams)
	if wantFams := []string{"AF_INET", "AF_INET6", "AF_NETLINK", "AF_UNIX"}; !slices.Equal(fams, wantFams) {
		t.Errorf("RestrictAddressFamilies=%q, want %q", fams, wantFams)
	}
	// setns(CLONE_NEWNET) into pods' namespaces must stay allowed.
	if ns := u.list("Service", "RestrictNamespaces"); len(ns) > 0 && !slices.Equal(ns, []string{"net"}) {
		t.Errorf("RestrictNamespaces=%q: the daemon enters network namespaces; use net", ns)
	}
	// Settings that would break the daemon (see the unit's comments).
	for _, key := range []string{"PrivateNetwork", "PrivateUsers", "DynamicUser", "User", "ProtectProc", "ProcSubset", "SystemCallFilter", "IPAddressDeny", "MemoryMax"} {
		if v := u.values("Service", key); len(v) > 0 {
			t.Errorf("%s=%q is set: it breaks the daemon (see the unit's comments)", key, v)
		}
	}
}

// The shipped /etc/default/imdsguard sets nothing but IMDSGUARD_ARGS, and
// nothing by default.
func TestDefaultFile(t *testing.T) {
	data, err := os.ReadFile("../../deploy/systemd/imdsguard.default")
	if err != nil {
		t.Fatal(err)
	}
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if line != "IMDSGUARD_ARGS=" {
			t.Errorf("imdsguard.default:%d: %q, want only comments and an empty IMDSGUARD_ARGS=", i+1, line)
		}
	}
	if u := loadUnit(t); !slices.Contains(u.values("Service", "EnvironmentFile"), "-/etc/default/imdsguard") ||
		!slices.Contains(execArgv(u.value("Service", "ExecStart")), "$IMDSGUARD_ARGS") {
		t.Errorf("the unit does not read IMDSGUARD_ARGS from -/etc/default/imdsguard into ExecStart")
	}
}

// systemdAnalyze finds systemd-analyze, or skips (fails in CI, which
// installs it: Debian package systemd).
func systemdAnalyze(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("systemd-analyze")
	if err == nil {
		return p
	}
	msg := "systemd-analyze not found (Debian package systemd): " + err.Error()
	if strings.EqualFold(os.Getenv("CI"), "true") || os.Getenv("IMDSGUARD_REQUIRE_PRIVILEGED") == "1" {
		t.Fatalf("%s (required: CI=true or IMDSGUARD_REQUIRE_PRIVILEGED=1)", msg)
	}
	t.Skip(msg)
	return ""
}

// verify runs systemd-analyze verify on a copy of the unit whose ExecStart
// names the freshly built daemon (verify checks that the binary exists and
// is executable; /usr/local/bin/imdsguard is not installed here) and
// returns its output lines and error.
func verify(t *testing.T, analyze, unitText string) ([]string, error) {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "imdsguard.service") // verify wants the real name
	if err := os.WriteFile(path, []byte(unitText), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(analyze, "verify", path)
	cmd.Env = append(os.Environ(), "SYSTEMD_LOG_COLOR=0", "SYSTEMD_PAGER=")
	out, err := cmd.CombinedOutput()
	var lines []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.TrimSpace(l) != "" {
			lines = append(lines, l)
		}
	}
	return lines, err
}

func verifiableUnit(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	bin := build(t).imdsguard
	text := strings.ReplaceAll(string(data), "ExecStart=/usr/local/bin/imdsguard ", "ExecStart="+bin+" ")
	if text == string(data) {
		t.Fatal("ExecStart=/usr/local/bin/imdsguard … not found in the unit")
	}
	return text
}

// orderedOnly are units the unit only orders itself against: on a machine
// without them verify may say they are missing, which is fine.
var orderedOnly = regexp.MustCompile(`(containerd|kubelet|docker|crio)\.service`)

func TestSystemdAnalyzeVerify(t *testing.T) {
	analyze := systemdAnalyze(t)
	text := verifiableUnit(t)
	lines, err := verify(t, analyze, text)
	var bad []string
	for _, l := range lines {
		switch {
		case orderedOnly.MatchString(l) && strings.Contains(strings.ToLower(l), "not found"):
			t.Logf("fine (Before= only): %s", l)
		case !strings.Contains(l, "imdsguard") && regexp.MustCompile(`^/(usr/)?lib/systemd/|^/etc/systemd/`).MatchString(l):
			// verify loads this machine's units too; their problems are not ours
			t.Logf("about another unit on this machine: %s", l)
		default:
			bad = append(bad, l)
		}
	}
	if err != nil || len(bad) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, strings.Join(bad, "\n"))
	}

	// The check above would see a mistake: verify does complain about a
	// misspelt key and a bad value. (It says nothing about an unknown
	// capability name, hence the name check in TestUnitInvariants.)
	for _, broken := range []string{
		strings.Replace(text, "\nType=notify\n", "\nTyp=notify\n", 1),
		strings.Replace(text, "\nRestart=always\n", "\nRestart=sometimes\n", 1),
	} {
		if broken == text {
			t.Fatal("could not break the unit for the control")
		}
		lines, _ := verify(t, analyze, broken)
		if len(lines) == 0 {
			t.Errorf("systemd-analyze verify printed nothing for a broken unit: the check above proves nothing")
		}
	}
}
