package nft

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// freshNetns makes a network namespace for one test, removed afterwards.
func freshNetns(t *testing.T) (name string, fd int) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" || os.Getenv("IMDSGUARD_REQUIRE_PRIVILEGED") == "1" {
			t.Fatal("needs root to create a network namespace")
		}
		t.Skip("needs root to create a network namespace")
	}
	b := make([]byte, 3)
	rand.Read(b)
	name = "ignft" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	fd, err := unix.Open("/var/run/netns/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return name, fd
}

func nft(t *testing.T, ns string, args ...string) string {
	t.Helper()
	out, err := exec.Command("nsenter", append([]string{"--net=/var/run/netns/" + ns, "nft"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("nft %v: %v: %s", args, err, out)
	}
	return string(out)
}

var testCfg = Config{
	Endpoints: []netip.AddrPort{netip.MustParseAddrPort("169.254.169.254:80"), netip.MustParseAddrPort("[fd00:ec2::254]:80")},
	LogGroup:  7000,
	Allowed:   []netip.Addr{netip.MustParseAddr("10.99.1.7"), netip.MustParseAddr("fd00:99:1::7")},
}

// The ruleset, as nft itself lists it, is exactly the expected one.
func TestRulesetAsNftListsIt(t *testing.T) {
	ns, fd := freshNetns(t)
	tb := New(fd)
	if err := tb.Apply(testCfg); err != nil {
		t.Fatal(err)
	}
	got := nft(t, ns, "list", "table", "inet", TableName)
	want := `table inet imdsguard {
	set allowed4 {
		type ipv4_addr
		elements = { 10.99.1.7 }
	}

	set allowed6 {
		type ipv6_addr
		elements = { fd00:99:1::7 }
	}

	chain forward {
		type filter hook forward priority filter; policy accept;
		ip daddr 169.254.169.254 tcp dport 80 ip saddr @allowed4 counter packets 0 bytes 0 accept
		ip daddr 169.254.169.254 tcp dport 80 limit rate 10/second burst 10 packets counter packets 0 bytes 0 log prefix "imdsguard" group 7000
		ip daddr 169.254.169.254 tcp dport 80 counter packets 0 bytes 0 drop
		ip6 daddr fd00:ec2::254 tcp dport 80 ip6 saddr @allowed6 counter packets 0 bytes 0 accept
		ip6 daddr fd00:ec2::254 tcp dport 80 limit rate 10/second burst 10 packets counter packets 0 bytes 0 log prefix "imdsguard" group 7000
		ip6 daddr fd00:ec2::254 tcp dport 80 counter packets 0 bytes 0 drop
	}
}
`
	if got != want {
		t.Fatalf("ruleset:\n%s\nwant:\n%s", got, want)
	}
	// machine-readable listing parses too
	var j map[string]any
	if err := json.Unmarshal([]byte(nft(t, ns, "-j", "list", "table", "inet", TableName)), &j); err != nil {
		t.Fatalf("nft -j output: %v", err)
	}
}

func TestRejectVariant(t *testing.T) {
	ns, fd := freshNetns(t)
	cfg := testCfg
	cfg.Reject, cfg.LogGroup = true, 0
	if err := New(fd).Apply(cfg); err != nil {
		t.Fatal(err)
	}
	got := nft(t, ns, "list", "chain", "inet", TableName, "forward")
	if !strings.Contains(got, "ip daddr 169.254.169.254 tcp dport 80 counter packets 0 bytes 0 reject with tcp reset") {
		t.Fatalf("no reject rule:\n%s", got)
	}
}

// Apply replaces the table atomically, Check notices a flush or a delete,
// Remove deletes exactly this table and leaves the others alone.
func TestReplaceCheckRemoveLeaveOthersAlone(t *testing.T) {
	ns, fd := freshNetns(t)
	nft(t, ns, "add", "table", "ip", "kube-proxy")
	nft(t, ns, "add", "chain", "ip", "kube-proxy", "x", "{ type filter hook forward priority 0 ; }")
	nft(t, ns, "add", "rule", "ip", "kube-proxy", "x", "counter")
	tb := New(fd)
	want := len(testCfg.Endpoints) * RulesPerEndpoint(testCfg)
	for range 2 { // a second Apply replaces, never duplicates
		if err := tb.Apply(testCfg); err != nil {
			t.Fatal(err)
		}
	}
	if ok, err := tb.Check(want); err != nil || !ok {
		t.Fatalf("Check after Apply: %v %v", ok, err)
	}
	nft(t, ns, "flush", "chain", "inet", TableName, "forward")
	if ok, err := tb.Check(want); err != nil || ok {
		t.Fatalf("Check after flush: %v %v, want false", ok, err)
	}
	nft(t, ns, "delete", "table", "inet", TableName)
	if ok, err := tb.Check(want); err != nil || ok {
		t.Fatalf("Check after delete: %v %v, want false", ok, err)
	}
	if err := tb.Apply(testCfg); err != nil {
		t.Fatal(err)
	}
	if err := tb.SetAllowed([]netip.Addr{netip.MustParseAddr("10.99.1.8")}, []netip.Addr{netip.MustParseAddr("10.99.1.7")}); err != nil {
		t.Fatal(err)
	}
	if got := nft(t, ns, "list", "set", "inet", TableName, "allowed4"); !strings.Contains(got, "10.99.1.8") || strings.Contains(got, "10.99.1.7") {
		t.Fatalf("allowed4 after SetAllowed:\n%s", got)
	}
	if err := tb.Remove(); err != nil {
		t.Fatal(err)
	}
	if err := tb.Remove(); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
	got := nft(t, ns, "list", "ruleset")
	if strings.Contains(got, TableName) || !strings.Contains(got, "table ip kube-proxy") {
		t.Fatalf("after Remove:\n%s", got)
	}
}
