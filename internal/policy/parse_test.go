package policy

import (
	"errors"
	"fmt"
	"github.com/imdsguard/imdsguard/internal/cloud"
	"os"
	"reflect"
	"strings"
	"testing"
)

// wantErr is one expected problem: its exact line and key, and a fragment
// of its message.
type wantErr struct {
	line int
	key  string
	msg  string
}

// checkErrors asserts that err holds exactly the problems in want, in
// order, each at its line and key, and that each renders as
// "p.yaml:LINE: KEY: message".
func checkErrors(t *testing.T, input string, err error, want []wantErr) {
	t.Helper()
	if err == nil {
		t.Fatalf("Parse(%q) succeeded, want %d error(s)", input, len(want))
	}
	got := splitErrors(err)
	if len(got) != len(want) {
		t.Fatalf("Parse(%q): got %d error(s), want %d:\n%v", input, len(got), len(want), err)
	}
	for i, w := range want {
		g := got[i]
		prefix := fmt.Sprintf("p.yaml:%d: ", w.line)
		if w.key != "" {
			prefix += w.key + ": "
		}
		if g.Line != w.line || g.Key != w.key || !strings.HasPrefix(g.Error(), prefix) || !strings.Contains(g.Msg, w.msg) {
			t.Errorf("error %d:\n got %q\nwant %q…%q", i, g.Error(), prefix, w.msg)
		}
	}
}

func splitErrors(err error) []*ParseError {
	var errs []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	} else {
		errs = []error{err}
	}
	out := make([]*ParseError, len(errs))
	for i, e := range errs {
		var pe *ParseError
		if !errors.As(e, &pe) {
			panic(fmt.Sprintf("error %q is not a *ParseError", e))
		}
		out[i] = pe
	}
	return out
}

// rulesDoc builds a document whose rules start on line 2.
func rulesDoc(rules ...string) string {
	return "mode: enforce\nrules:\n" + strings.Join(rules, "")
}

const whyCgroupFragment = "comm and uid are chosen by the process itself"

func TestParseErrorsWithLines(t *testing.T) {
	long := strings.Repeat("a", 64)
	var manyEndpoints, manyRules strings.Builder
	manyEndpoints.WriteString("endpoints:\n")
	for i := range 33 {
		fmt.Fprintf(&manyEndpoints, "  - 10.0.%d.%d:80\n", i/250, i%250+1)
	}
	manyRules.WriteString("rules:\n")
	for i := range 1001 {
		fmt.Fprintf(&manyRules, "  - {name: r%d, match: {cgroup: /r%d}, deny: true}\n", i, i)
	}

	tests := []struct {
		name, yaml string
		want       []wantErr
	}{
		// The file as a whole.
		{"tab", "mode: audit\n\trequireToken: false\n", []wantErr{{2, "", "tab character"}}},
		{"tab in a comment", "mode: audit # a\tb\n", []wantErr{{1, "", "tab character"}}},
		{"invalid UTF-8", "mode: audit\nkind: \xff\n", []wantErr{{2, "", "not valid UTF-8 (first bad byte 0xff at offset 18): a policy file is YAML text in UTF-8"}}},
		{"invalid UTF-8 on many lines", "mode: audit\nkind: \xff\n\xfe: 1\n\xc3\n", []wantErr{{2, "", "not valid UTF-8 (first bad byte 0xff at offset 18)"}}},
		{"NUL byte", "mode: audit\nki\x00nd: Policy\n", []wantErr{{2, "", "not a text file (a NUL byte at offset 14): a policy file is YAML text in UTF-8"}}},
		{"control character", "mode: audit\n\nkind: a\x01\n", []wantErr{{3, "", "control character U+0001"}}},
		{"syntax error", "mode: audit\nkind: [Policy\n", []wantErr{{2, "", "YAML syntax error: did not find expected ',' or ']'"}}},
		{"syntax error in the only line", "kind: [Policy\n", []wantErr{{1, "", "YAML syntax error"}}},
		{"syntax error at the end", "mode: audit\nkind: [Policy\n\n\n", []wantErr{{2, "", "YAML syntax error"}}},
		{"lone CR", "mode: audit\rkind: Policy\n", []wantErr{{1, "", "control character U+000D"}}},
		{"line separator", "mode: audit\nkind: Pol\u2028icy\n", []wantErr{{2, "", "control character U+2028"}}},
		{"syntax error on line 1", "mode: b: c\n", []wantErr{{1, "", "YAML syntax error: mapping values are not allowed"}}},
		{"syntax error later", "mode: audit\nkind: Policy\nrequireToken: true\n refuseForwarded: true\n", []wantErr{{4, "", "YAML syntax error"}}},
		{"two documents", "mode: audit\n---\nmode: enforce\n", []wantErr{{2, "", "a policy file holds one YAML document; a second one starts here"}}},
		{"a second, empty document", "mode: audit\n---\n", []wantErr{{2, "", "one YAML document"}}},
		{"top level is a list", "- mode: audit\n", []wantErr{{1, "", "want a mapping of policy keys"}}},
		{"top level is a string", "\nenforce\n", []wantErr{{2, "", `want a mapping of policy keys (apiVersion, kind, mode, …) at the top level, got the string "enforce"`}}},

		// Keys.
		{"unknown key, suggestion", "mode: audit\nrequireTokens: true\n", []wantErr{{2, "requireTokens", `unknown key "requireTokens" (did you mean "requireToken"?)`}}},
		{"unknown key, wrong case", "Mode: audit\n", []wantErr{{1, "Mode", `unknown key "Mode" (did you mean "mode"?)`}}},
		{"unknown key, no suggestion", "mode: audit\nallowlist: []\n", []wantErr{{2, "allowlist", `unknown key "allowlist" (known keys: apiVersion, kind, mode, cloud, requireToken, blockNonHostNetns, refuseForwarded, nftables, nftablesAction, maxConnectionsPerCgroup, maxConnectionsPerUser, maxTokenTTL, credentialReadsPerMinute, endpoints, credentialPaths, output, rules)`}}},
		{"duplicate key", "mode: audit\nkind: Policy\nmode: enforce\n", []wantErr{{3, "mode", "duplicate key (first at line 1)"}}},
		{"key not a string", "mode: audit\n1: x\n", []wantErr{{2, "", "keys must be plain strings, got the number 1"}}},
		{"complex key", "? [a]\n: 1\n", []wantErr{{1, "", "keys must be plain strings, got a list"}}},
		{"anchor", "mode: &m audit\n", []wantErr{{1, "mode", "anchors (&m) are not supported"}}},
		{"alias", "mode: audit\nkind: Policy\napiVersion: *m\n", []wantErr{{3, "", "aliases (*m) are not supported"}}},
		{"anchor and alias", "rules:\n  - &r {name: a, match: {cgroup: /a}, deny: true}\n  - *r\n", []wantErr{
			{2, "rules[0]", "anchors (&r) are not supported"},
			{3, "rules[1]", "aliases (*r) are not supported"},
		}},
		{"merge key", "rules:\n  - name: a\n    <<: {deny: true}\n    match: {cgroup: /a}\n", []wantErr{{3, "rules[0]", "merge keys (<<) are not supported"}}},
		{"tag", "mode: !!str audit\n", []wantErr{{1, "mode", "tags (!!str) are not supported"}}},
		{"custom tag", "rules: !rules []\n", []wantErr{{1, "rules", "tags (!rules) are not supported"}}},

		// Types of the top-level keys.
		{"mode not a string", "mode: 1\n", []wantErr{{1, "mode", `want a string, got the number 1 (quote it if you mean the string "1")`}}},
		{"mode empty", "mode: ''\n", []wantErr{{1, "mode", `"" is not a mode`}}},
		{"output format", "output:\n  format: xml\n", []wantErr{{2, "output.format", `"xml" is not a format`}}},
		{"output target", "output:\n  targets:\n    - stdout\n    - file:relative.log\n", []wantErr{{4, "output.targets[1]", "must be absolute"}}},
		{"output queue", "output:\n  queue: 0\n", []wantErr{{2, "output.queue", "want an integer from 1 to 10000000"}}},
		{"output syslog UDP limit too small", "output:\n  syslogUDPMaxBytes: 100\n", []wantErr{{2, "output.syslogUDPMaxBytes", "100 octets: want 480 to 65507"}}},
		{"output syslog UDP limit not a number", "output:\n  syslogUDPMaxBytes: 2k\n", []wantErr{{2, "output.syslogUDPMaxBytes", `want an integer from 480 to 65507 (octets), got the string "2k"`}}},
		{"output fold window", "output:\n  foldWindow: soon\n", []wantErr{{2, "output.foldWindow", `"soon" is not a duration`}}},
		{"output unknown key", "output:\n  formt: json\n", []wantErr{{2, "output.formt", `unknown key "formt" (did you mean "format"?)`}}},
		{"nftables action", "nftables: true\nnftablesAction: deny\n", []wantErr{{2, "nftablesAction", `"deny" is not an action (want "drop" or "reject")`}}},
		{"nftables not a bool", "nftables: off\n", []wantErr{{1, "nftables", "want a boolean"}}},
		{"bool as a number", "refuseForwarded: 1\n", []wantErr{{1, "refuseForwarded", "want a boolean (true or false), got the number 1"}}},
		{"bool as a list", "refuseForwarded: [true]\n", []wantErr{{1, "refuseForwarded", "want a boolean (true or false), got a list"}}},
		{"bool quoted", "blockNonHostNetns: \"false\"\n", []wantErr{{1, "blockNonHostNetns", `want a boolean (true or false), got the string "false"`}}},
		{"bool as yes", "mode: audit\nrequireToken: no\n", []wantErr{{2, "requireToken", `got the string "no"`}}},
		{"list as a string", "endpoints: 169.254.169.254:80\n", []wantErr{{1, "endpoints", `want a list of strings, got the string "169.254.169.254:80"`}}},
		{"list as a mapping", "credentialPaths: {a: b}\n", []wantErr{{1, "credentialPaths", "want a list of strings, got a mapping"}}},
		{"list item not a string", "endpoints:\n  - 169.254.169.254:80\n  - 80\n  - [a]\n  -\n", []wantErr{
			{3, "endpoints[1]", "want a string, got the number 80"},
			{4, "endpoints[2]", "want a string, got a list"},
			{5, "endpoints[3]", "want a string, got no value"},
		}},

		// Values of the top-level keys.
		{"endpoint in a block list", "endpoints:\n  - 169.254.169.254:80\n  - 169.254.169.254\n", []wantErr{{3, "endpoints[1]", "is not an address:port"}}},
		{"endpoint duplicate", "endpoints: [\"[fd00:ec2::254]:80\",\n  \"[fd00:ec2:0::254]:80\"]\n", []wantErr{{2, "endpoints[1]", "listed twice: it is the same endpoint as endpoints[0] (line 1)"}}},
		{"too many endpoints", manyEndpoints.String(), []wantErr{{1, "endpoints", "at most 32 endpoints (got 33)"}}},
		{"credential path duplicate", "credentialPaths:\n  - /latest/meta-data/iam/info\n  - /2021-07-15/meta-data/IAM/info/\n", []wantErr{{3, "credentialPaths[1]", "listed twice: it is the same path as credentialPaths[0] (line 2)"}}},

		// Rules: shape.
		{"rules not a list", "rules: {name: a}\n", []wantErr{{1, "rules", "want a list of rules, got a mapping"}}},
		{"rule not a mapping", rulesDoc("  - a\n"), []wantErr{{3, "rules[0]", `want a mapping (a rule: {name: …, match: {…}, deny: true}), got the string "a"`}}},
		{"rule empty", rulesDoc("  -\n"), []wantErr{{3, "rules[0]", "want a mapping (a rule: {name: …, match: {…}, deny: true}), got no value"}}},
		{"unknown key in a rule", rulesDoc("  - name: a\n    match: {cgroup: /a}\n    alowV1: true\n"), []wantErr{{5, "rules[0].alowV1", `unknown key "alowV1" (did you mean "allowV1"?)`}}},
		{"match key in a rule", rulesDoc("  - name: a\n    cgroup: /a\n    deny: true\n"), []wantErr{{4, "rules[0].cgroup", `unknown key "cgroup" (it belongs under match: match: {cgroup: …})`}}},
		{"unknown key in a match", rulesDoc("  - name: a\n    match:\n      cgroup: /a\n      uidd: 5\n    deny: true\n"), []wantErr{{6, "rules[0].match.uidd", `unknown key "uidd" (did you mean "uid"?)`}}},
		{"rule key in a match", rulesDoc("  - name: a\n    match: {cgroup: /a, deny: true}\n"), []wantErr{{4, "rules[0].match.deny", `unknown key "deny" (it belongs to the rule, next to match, not under it)`}}},
		{"unknown key in a match, no suggestion", rulesDoc("  - name: a\n    match: {exe: x}\n    deny: true\n"), []wantErr{{4, "rules[0].match.exe", `unknown key "exe" (known keys: cgroup, namespace, pod, container, comm, uid)`}}},
		{"duplicate key in a rule", rulesDoc("  - name: a\n    match: {cgroup: /a}\n    deny: true\n    deny: false\n"), []wantErr{{6, "rules[0].deny", "duplicate key (first at line 5)"}}},
		{"duplicate key in a match", rulesDoc("  - name: a\n    match: {cgroup: /a, cgroup: /b}\n    deny: true\n"), []wantErr{{4, "rules[0].match.cgroup", "duplicate key (first at line 4)"}}},
		{"match not a mapping", rulesDoc("  - name: a\n    match: /a\n    deny: true\n"), []wantErr{{4, "rules[0].match", `want a mapping (e.g. {cgroup: "/system.slice/backup.service"}; {} matches every process), got the string "/a"`}}},
		{"match without a value", rulesDoc("  - name: a\n    match:\n    deny: true\n"), []wantErr{{4, "rules[0].match", "want a mapping (e.g. {cgroup: \"/system.slice/backup.service\"}; {} matches every process), got no value"}}},
		{"grant not a bool", rulesDoc("  - name: a\n    match: {cgroup: /a}\n    allowV1: \"true\"\n"), []wantErr{{5, "rules[0].allowV1", `want a boolean (true or false), got the string "true"`}}},
		{"deny without a value", rulesDoc("  - name: a\n    match: {cgroup: /a}\n    deny:\n"), []wantErr{{5, "rules[0].deny", "want a boolean (true or false), got no value"}}},

		// Rules: name.
		{"name missing", rulesDoc("  - match: {cgroup: /a}\n    deny: true\n"), []wantErr{{3, "rules[0].name", "missing: every rule needs a name"}}},
		{"name not a string", rulesDoc("  - name: 7\n    match: {cgroup: /a}\n    deny: true\n"), []wantErr{{3, "rules[0].name", `want a string, got the number 7 (quote it if you mean the string "7")`}}},
		{"name invalid", rulesDoc("  - name: Backup_Agent\n    match: {cgroup: /a}\n    deny: true\n"), []wantErr{{3, "rules[0].name", `"Backup_Agent" is not a valid rule name: use 1 to 63 lower-case letters, digits and "-", starting and ending with a letter or digit`}}},
		{"name ends with -", rulesDoc("  - {name: a-, match: {cgroup: /a}, deny: true}\n"), []wantErr{{3, "rules[0].name", "not a valid rule name"}}},
		{"name empty", rulesDoc("  - {name: '', match: {cgroup: /a}, deny: true}\n"), []wantErr{{3, "rules[0].name", `"" is not a valid rule name`}}},
		{"name too long", rulesDoc("  - {name: " + long + ", match: {cgroup: /a}, deny: true}\n"), []wantErr{{3, "rules[0].name", "not a valid rule name"}}},
		{"name duplicate", rulesDoc(
			"  - name: a\n    match: {cgroup: /a}\n    deny: true\n",
			"  - name: a\n    match: {cgroup: /b}\n    deny: true\n",
		), []wantErr{{6, "rules[1].name", `duplicate rule name "a" (first at line 3)`}}},

		// Rules: match values.
		{"cgroup not a glob", rulesDoc(
			"  - name: a\n    match: {cgroup: /a}\n    deny: true\n",
			"  - name: b\n    match:\n      cgroup: \"/kube[pods\"\n    deny: true\n",
		), []wantErr{{8, "rules[1].match.cgroup", `"/kube[pods" is not a valid glob: segment "kube[pods"`}}},
		{"cgroup relative", rulesDoc("  - {name: a, match: {cgroup: system.slice}, deny: true}\n"), []wantErr{{3, "rules[0].match.cgroup", `"system.slice" is not a valid glob: it must start with "/"`}}},
		{"cgroup empty", rulesDoc("  - {name: a, match: {cgroup: \"\"}, deny: true}\n"), []wantErr{{3, "rules[0].match.cgroup", `"" is not a valid glob: the pattern is empty`}}},
		{"cgroup with **", rulesDoc("  - {name: a, match: {cgroup: /a/b**}, deny: true}\n"), []wantErr{{3, "rules[0].match.cgroup", `"**" must be a whole segment`}}},
		{"cgroup not a string", rulesDoc("  - {name: a, match: {cgroup: [/a]}, deny: true}\n"), []wantErr{{3, "rules[0].match.cgroup", "want a string, got a list"}}},
		{"comm too long", rulesDoc("  - name: a\n    match: {cgroup: /a, comm: backup-agent-v2.1}\n    deny: true\n"), []wantErr{{4, "rules[0].match.comm",
			`"backup-agent-v2.1" is 17 bytes, but the kernel keeps only the first 15 bytes of a process name, so this rule can never match (write "backup-agent-v2")`}}},
		{"comm empty", rulesDoc("  - {name: a, match: {cgroup: /a, comm: ''}, deny: true}\n"), []wantErr{{3, "rules[0].match.comm", "must not be empty"}}},
		{"comm a path", rulesDoc("  - {name: a, match: {cgroup: /a, comm: /usr/bin/curl}, deny: true}\n"), []wantErr{{3, "rules[0].match.comm", `"/usr/bin/curl" contains "/": comm is the process name without its directory`}}},
		{"comm with NUL", rulesDoc("  - {name: a, match: {cgroup: /a, comm: \"a\\0b\"}, deny: true}\n"), []wantErr{{3, "rules[0].match.comm", "contains a NUL byte"}}},
		{"comm a number", rulesDoc("  - {name: a, match: {cgroup: /a, comm: 123}, deny: true}\n"), []wantErr{{3, "rules[0].match.comm", `want a string, got the number 123 (quote it if you mean the string "123")`}}},
		{"uid negative", rulesDoc("  - {name: a, match: {uid: -1}, deny: true}\n"), []wantErr{{3, "rules[0].match.uid", "want an integer from 0 to 4294967295, got the number -1"}}},
		{"uid too big", rulesDoc("  - {name: a, match: {uid: 4294967296}, deny: true}\n"), []wantErr{{3, "rules[0].match.uid", "want an integer from 0 to 4294967295, got the number 4294967296"}}},
		{"uid huge", rulesDoc("  - {name: a, match: {uid: 123456789012345678901234567890}, deny: true}\n"), []wantErr{{3, "rules[0].match.uid", "want an integer from 0 to 4294967295, got the number 1234"}}},
		{"uid quoted", rulesDoc("  - {name: a, match: {uid: \"1001\"}, deny: true}\n"), []wantErr{{3, "rules[0].match.uid", `want an integer from 0 to 4294967295, got the string "1001"`}}},
		{"uid hex", rulesDoc("  - {name: a, match: {uid: 0x3e9}, deny: true}\n"), []wantErr{{3, "rules[0].match.uid", "want an integer from 0 to 4294967295, got the number 0x3e9 (write it in decimal"}}},
		{"uid leading zero", rulesDoc("  - {name: a, match: {uid: 01001}, deny: true}\n"), []wantErr{{3, "rules[0].match.uid", "got the number 01001 (write it in decimal"}}},
		{"uid float", rulesDoc("  - {name: a, match: {uid: 1.5}, deny: true}\n"), []wantErr{{3, "rules[0].match.uid", "want an integer from 0 to 4294967295, got the number 1.5"}}},

		// Rules: what they grant.
		{"grants nothing", rulesDoc("  - name: a\n    match: {cgroup: /a}\n"), []wantErr{{3, "rules[0]", "rule grants nothing: set deny, allowV1, allowNonHostNetns or credentialReadsPerMinute"}}},
		{"grants nothing, all false", rulesDoc("  - name: a\n    match: {cgroup: /a}\n    deny: false\n    allowV1: false\n"), []wantErr{{3, "rules[0]", "rule grants nothing"}}},
		{"deny with allow", rulesDoc("  - name: a\n    match: {cgroup: /a}\n    allowV1: true\n    deny: true\n"), []wantErr{{6, "rules[0].deny", "deny cannot be combined with allowV1: a denied workload gets no IMDS access at all"}}},
		{"deny with both allows", rulesDoc("  - {name: a, match: {cgroup: /a}, allowV1: true, allowNonHostNetns: true, deny: true}\n"), []wantErr{{3, "rules[0].deny", "deny cannot be combined with allowV1 and allowNonHostNetns"}}},
		{"allowV1 on comm", rulesDoc("  - name: a\n    match: {comm: backup-agent}\n    allowV1: true\n"), []wantErr{{4, "rules[0].match", "a rule that grants allowV1 must also match a cgroup or a namespace: " + whyCgroupFragment}}},
		{"allowNonHostNetns on uid", rulesDoc("  - name: a\n    match:\n      uid: 0\n    allowNonHostNetns: true\n"), []wantErr{{4, "rules[0].match", "a rule that grants allowNonHostNetns must also match a cgroup or a namespace: " + whyCgroupFragment}}},
		{"allow without match", rulesDoc("  - name: a\n    allowV1: true\n    allowNonHostNetns: true\n"), []wantErr{{3, "rules[0].match", "a rule that grants allowV1 and allowNonHostNetns must also match a cgroup"}}},
		{"allow on every cgroup", rulesDoc("  - name: a\n    match: {cgroup: \"/**\", comm: x}\n    allowV1: true\n"), []wantErr{{4, "rules[0].match.cgroup", `"/**" matches every cgroup, but a rule that grants allowV1 must match the cgroup of the workload it is for (or its namespace): ` + whyCgroupFragment}}},

		// Rules: shadowed.
		{"shadowed by an empty match", rulesDoc(
			"  - name: all\n    match: {}\n    deny: true\n",
			"  - name: b\n    match: {cgroup: /b}\n    allowV1: true\n",
		), []wantErr{{6, "rules[1]", `rule "b" can never match: rule "all" (line 3) matches everything it matches`}}},
		{"shadowed by the same match", rulesDoc(
			"  - name: a\n    match: {cgroup: /a, uid: 5}\n    allowV1: true\n",
			"  - name: b\n    match: {uid: 5, cgroup: /a}\n    allowNonHostNetns: true\n",
		), []wantErr{{6, "rules[1]", `rule "b" can never match: rule "a" (line 3) matches everything it matches`}}},
		{"shadowed by a subset", rulesDoc(
			"  - {name: a, match: {cgroup: /a}, deny: true}\n",
			"  - {name: b, match: {cgroup: /b}, deny: true}\n",
			"  - {name: c, match: {cgroup: /a, comm: x}, allowV1: true}\n",
		), []wantErr{{5, "rules[2]", `rule "c" can never match: rule "a" (line 3) matches everything it matches`}}},
		{"shadowed by every cgroup", rulesDoc(
			"  - {name: a, match: {cgroup: /**, uid: 7}, deny: true}\n",
			"  - {name: b, match: {cgroup: /b, uid: 7}, deny: true}\n",
		), []wantErr{{4, "rules[1]", `rule "b" can never match: rule "a" (line 3)`}}},
		{"not shadowed by a rule that can never match", rulesDoc(
			"  - {name: a, match: {cgroup: /a, comm: a-very-long-process-name}, deny: true}\n",
			"  - {name: b, match: {cgroup: /a, comm: a-very-long-process-name}, deny: true}\n",
		), []wantErr{
			{3, "rules[0].match.comm", "can never match"},
			{4, "rules[1].match.comm", "can never match"},
		}},
		{"too many rules", manyRules.String(), []wantErr{{1, "rules", "at most 1000 rules (got 1001)"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse([]byte(tt.yaml), "p.yaml")
			if err == nil {
				out, _ := p.YAML()
				t.Fatalf("Parse(%q) succeeded:\n%s", tt.yaml, out)
			}
			checkErrors(t, tt.yaml, err, tt.want)
		})
	}
}

// A file with five different problems reports all five, in line order.
func TestParseReportsEveryProblem(t *testing.T) {
	const doc = `apiVersion: imdsguard.io/v1
mdoe: audit                      # 2: unknown key
requireToken: yes                # 3: not a boolean
endpoints: ["169.254.169.254:80"]
rules:
  - name: backup
    match: {cgroup: "/kube[pods"}  # 7: bad glob
    allowV1: true
  - name: backup                 # 9: duplicate name
    match: {uid: 1001}
    deny: true
  - name: broker
    match: {comm: iam-broker}    # 13: allow without a cgroup
    allowNonHostNetns: true
`
	_, err := Parse([]byte(doc), "p.yaml")
	checkErrors(t, doc, err, []wantErr{
		{2, "mdoe", `unknown key "mdoe" (did you mean "mode"?)`},
		{3, "requireToken", "want a boolean"},
		{7, "rules[0].match.cgroup", `"/kube[pods" is not a valid glob`},
		{9, "rules[1].name", `duplicate rule name "backup" (first at line 6)`},
		{13, "rules[2].match", "a rule that grants allowNonHostNetns must also match a cgroup"},
	})
	want := "p.yaml:7: rules[0].match.cgroup: \"/kube[pods\" is not a valid glob: "
	if !strings.Contains(err.Error(), want) {
		t.Errorf("error text:\n%v\nwant a line starting %q", err, want)
	}
	if n := strings.Count(err.Error(), "\n") + 1; n != 5 {
		t.Errorf("error text has %d lines, want 5:\n%v", n, err)
	}
}

// fullExample is the schema's example.
const fullExample = `apiVersion: imdsguard.io/v1
kind: Policy
mode: enforce                 # enforce | audit
requireToken: true            # refuse token-less (IMDSv1) requests
blockNonHostNetns: true       # refuse connections from other network namespaces
refuseForwarded: true         # refuse requests carrying X-Forwarded-For
endpoints: ["169.254.169.254:80", "[fd00:ec2::254]:80"]
credentialPaths: ["/latest/meta-data/iam/security-credentials/", "/latest/meta-data/identity-credentials/", "/latest/meta-data/iam/info"]
rules:                        # exceptions, first match wins
  - name: legacy-backup-agent
    match: {cgroup: "/system.slice/backup.service", comm: "backup-agent"}
    allowV1: true             # this workload may still use IMDSv1
  - name: iam-broker
    match: {cgroup: "/kubepods.slice/*/*pod1b2c*/*"}
    allowNonHostNetns: true   # may reach IMDS from its pod
  - name: no-imds-for-ci
    match: {uid: 1001}
    deny: true                # no IMDS at all
`

// fullExampleYAML is what YAML() renders for it: every key in schema order.
const fullExampleYAML = `apiVersion: imdsguard.io/v1
kind: Policy
mode: enforce
cloud: auto
requireToken: true
blockNonHostNetns: true
refuseForwarded: true
nftables: true
nftablesAction: drop
maxConnectionsPerCgroup: 128
maxConnectionsPerUser: 512
endpoints:
  - 169.254.169.254:80
  - '[fd00:ec2::254]:80'
credentialPaths:
  - /latest/meta-data/iam/security-credentials/
  - /latest/meta-data/identity-credentials/
  - /latest/meta-data/iam/info
output:
  format: json
  targets:
    - stdout
  queue: 10000
  foldWindow: 10s
rules:
  - name: legacy-backup-agent
    match: {cgroup: /system.slice/backup.service, comm: backup-agent}
    allowV1: true
  - name: iam-broker
    match: {cgroup: /kubepods.slice/*/*pod1b2c*/*}
    allowNonHostNetns: true
  - name: no-imds-for-ci
    match: {uid: 1001}
    deny: true
`

func TestFullExample(t *testing.T) {
	p, err := Parse([]byte(fullExample), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	uid := uint32(1001)
	want := []Rule{
		{Name: "legacy-backup-agent", Match: Match{Cgroup: "/system.slice/backup.service", Comm: "backup-agent"}, AllowV1: true},
		{Name: "iam-broker", Match: Match{Cgroup: "/kubepods.slice/*/*pod1b2c*/*"}, AllowNonHostNetns: true},
		{Name: "no-imds-for-ci", Match: Match{UID: &uid}, Deny: true},
	}
	if !reflect.DeepEqual(p.Rules, want) {
		t.Errorf("rules %+v, want %+v", p.Rules, want)
	}
	out, err := p.YAML()
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != fullExampleYAML {
		t.Errorf("YAML():\n%s\nwant:\n%s", out, fullExampleYAML)
	}
	assertRoundTrip(t, p)
}

// assertRoundTrip renders p and parses it back to the same policy.
func assertRoundTrip(t *testing.T, p *Policy) {
	t.Helper()
	out, err := p.YAML()
	if err != nil {
		t.Fatal(err)
	}
	back, err := Parse(out, "rendered.yaml")
	if err != nil {
		t.Fatalf("parsing YAML():\n%s\n%v", out, err)
	}
	if !reflect.DeepEqual(back, p) {
		t.Fatalf("round trip through\n%s\ngave %+v, want %+v", out, back, p)
	}
	again, _ := back.YAML()
	if string(again) != string(out) {
		t.Fatalf("rendering is not stable:\n%s\nthen\n%s", out, again)
	}
}

// Values YAML would read as something else, or that need quoting in a flow
// mapping, survive the round trip.
func TestRoundTripAwkwardValues(t *testing.T) {
	doc := rulesDoc(
		`  - {name: a, match: {cgroup: "/a,b/{c}/[x]y/*: z", comm: "true"}, deny: true}`+"\n",
		`  - {name: b, match: {cgroup: "/#x/'q'/\"d\"", comm: "123"}, deny: true}`+"\n",
		`  - {name: c, match: {cgroup: "/*", comm: "*x # y, {z}: w"}, deny: true}`+"\n",
		`  - {name: d, match: {cgroup: "/null", comm: "~"}, deny: true}`+"\n",
		`  - {name: e, match: {cgroup: "/a\\*", comm: "a\nb"}, deny: true}`+"\n",
		`  - {name: f, match: {cgroup: "/é/日本", comm: "ünï"}, deny: true}`+"\n",
		`  - {name: g, match: {uid: 4294967295}, deny: true}`+"\n",
		`  - {name: h, match: {uid: 0}, deny: true}`+"\n",
		`  - {name: i, match: {}, deny: true}`+"\n",
	)
	p, err := Parse([]byte(doc), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if p.Rules[4].Match.Comm != "a\nb" || p.Rules[4].Match.Cgroup != `/a\*` || *p.Rules[6].Match.UID != 4294967295 {
		t.Fatalf("decoded %+v", p.Rules)
	}
	assertRoundTrip(t, p)
}

func TestEmptyDocumentsMeanDefaults(t *testing.T) {
	d, err := Default(cloud.AWS)
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range []string{"", "\n\n", "# nothing but a comment\n", "---\n", "--- # start\n...\n", "null\n", "~\n",
		"apiVersion:\nkind:\nmode:\nrequireToken:\nblockNonHostNetns:\nrefuseForwarded:\nendpoints:\ncredentialPaths:\nrules:\n"} {
		p, err := Parse([]byte(doc), "p.yaml")
		if err != nil {
			t.Errorf("Parse(%q): %v", doc, err)
			continue
		}
		if !reflect.DeepEqual(p, d) {
			t.Errorf("Parse(%q) = %+v, want the defaults %+v", doc, p, d)
		}
		if p.Rules == nil {
			t.Errorf("Parse(%q): Rules is nil, want an empty list", doc)
		}
	}
	out, _ := d.YAML()
	if !strings.HasSuffix(string(out), "\nrules: []\n") {
		t.Errorf("defaults render without rules: []:\n%s", out)
	}
}

func TestCommentsEverywhere(t *testing.T) {
	const doc = `# head comment
--- # document start
apiVersion: imdsguard.io/v1 # trailing
# between keys
kind: Policy
mode: audit
endpoints: # before the list
  # before an item
  - 169.254.169.254:80 # after an item
  # after the last item
credentialPaths: [
  "/latest/meta-data/iam/info", # inside a flow list
]
rules:
  # before a rule
  - name: a # after the name
    # inside a rule
    match: # before the match
      # inside the match
      cgroup: /system.slice/a.service # after the cgroup
    allowV1: true
  # after the last rule
# tail comment
`
	p, err := Parse([]byte(doc), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	crlf, err := Parse([]byte(strings.ReplaceAll(doc, "\n", "\r\n")), "p.yaml")
	if err != nil {
		t.Fatalf("with CRLF line ends: %v", err)
	}
	if !reflect.DeepEqual(crlf, p) {
		t.Fatalf("with CRLF line ends: %+v, want %+v", crlf, p)
	}
	if p.Mode != ModeAudit || len(p.Endpoints) != 1 || len(p.CredentialPaths) != 1 || len(p.Rules) != 1 || p.Rules[0].Match.Cgroup != "/system.slice/a.service" {
		t.Fatalf("parsed %+v", p)
	}
}

// Top-level keys left out or without a value take their defaults; false is
// kept.
func TestExplicitValues(t *testing.T) {
	p, err := Parse([]byte("requireToken: false\nblockNonHostNetns: False\nrefuseForwarded:\ncredentialPaths: []\n"), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if *p.RequireToken || *p.BlockNonHostNetns || !*p.RefuseForwarded || len(p.CredentialPaths) != 0 || p.CredentialPaths == nil {
		t.Fatalf("parsed %+v", p)
	}
	assertRoundTrip(t, p)
}

// Rules that are fine: a rule may grant both allows; a later rule that is
// more general than an earlier one is not shadowed.
func TestValidRules(t *testing.T) {
	doc := rulesDoc(
		"  - {name: a, match: {cgroup: /a, comm: x}, allowV1: true, allowNonHostNetns: true}\n",
		"  - {name: b, match: {cgroup: /a}, deny: true}\n",
		"  - {name: c, match: {cgroup: /a/**, uid: 0}, allowV1: true}\n",
		"  - {name: d, match: {uid: 0}, deny: true}\n",
		"  - {name: e, match: {comm: sh}, deny: true}\n",
		"  - {name: f, match: {cgroup: \"/\"}, deny: true}\n",
		"  - {name: g-0, match: {}, deny: true}\n",
	)
	p, err := Parse([]byte(doc), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Rules) != 7 {
		t.Fatalf("rules %+v", p.Rules)
	}
	assertRoundTrip(t, p)
}

func TestExamplePolicyFile(t *testing.T) {
	const file = "../../deploy/policy.example.yaml"
	p, err := Load(file, cloud.AWS)
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, len(p.Rules))
	for i, r := range p.Rules {
		names[i] = r.Name
	}
	want := []string{"legacy-backup-agent", "iam-broker", "credential-broker", "no-imds-for-ci", "no-host-network-pods"}
	if !reflect.DeepEqual(names, want) {
		t.Errorf("rules %v, want %v", names, want)
	}
	last := p.Rules[len(p.Rules)-1]
	if !last.Deny || last.Match.Cgroup != "/kubepods*/**" {
		t.Errorf("last rule %+v, want deny for /kubepods*/**", last)
	}
	assertRoundTrip(t, p)
	// The example spells out every default.
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range policyKeys {
		if !strings.Contains(string(data), "\n"+key+":") {
			t.Errorf("%s does not set %s", file, key)
		}
	}
}

// The embedded default spells out every key too, or says in a comment
// why it leaves one to the cloud's profile.
func TestDefaultYAMLHasEveryKey(t *testing.T) {
	var comments strings.Builder
	for _, line := range strings.Split(string(DefaultYAML()), "\n") {
		if strings.HasPrefix(line, "#") {
			comments.WriteString(line + "\n")
		}
	}
	for _, key := range policyKeys {
		if !strings.Contains("\n"+string(DefaultYAML()), "\n"+key+":") && !strings.Contains(comments.String(), " "+key) {
			t.Errorf("default.yaml neither sets %s nor says why not", key)
		}
	}
}

func TestParseErrorText(t *testing.T) {
	for _, tt := range []struct {
		e    ParseError
		want string
	}{
		{ParseError{"f.yaml", 7, "rules[1].name", "missing"}, "f.yaml:7: rules[1].name: missing"},
		{ParseError{"f.yaml", 2, "", "tab character"}, "f.yaml:2: tab character"},
		{ParseError{"f.yaml", 0, "endpoints", "x"}, "f.yaml: endpoints: x"},
	} {
		if got := tt.e.Error(); got != tt.want {
			t.Errorf("%+v: %q, want %q", tt.e, got, tt.want)
		}
	}
}

func TestEditDistance(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		want int
	}{{"mdoe", "mode", 2}, {"", "abc", 3}, {"allowV1", "alowV1", 1}, {"kitten", "sitting", 3}} {
		if got := editDistance(tt.a, tt.b); got != tt.want {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
}

// FuzzParse checks that Parse never panics, that every problem has a line
// (the file's problems are all tied to a place), and that whatever parses
// round-trips.
func FuzzParse(f *testing.F) {
	f.Add(fullExample)
	f.Add("mode: audit\nrules:\n  - {name: a, match: {cgroup: /a}, deny: true}\n")
	f.Add("endpoints: [\"1.2.3.4:80\", 5]\n")
	f.Add("a: &x 1\nb: *x\n")
	f.Fuzz(func(t *testing.T, doc string) {
		p, err := Parse([]byte(doc), "p.yaml")
		if err != nil {
			for _, e := range splitErrors(err) {
				if e.Line <= 0 {
					t.Fatalf("Parse(%q): problem without a line: %v", doc, e)
				}
			}
			return
		}
		assertRoundTrip(t, p)
	})
}

// The connection bounds are integers within the socket map's size.
func TestConnectionBoundsAreValidated(t *testing.T) {
	for _, tt := range []struct{ doc, want string }{
		{"maxConnectionsPerCgroup: 0\n", "p.yaml:1: maxConnectionsPerCgroup: want an integer from 1 to 65536"},
		{"maxConnectionsPerUser: 65537\n", "p.yaml:1: maxConnectionsPerUser: want an integer from 1 to 65536"},
		{"maxConnectionsPerCgroup: many\n", "p.yaml:1: maxConnectionsPerCgroup: want an integer from 1 to 65536"},
	} {
		_, err := Parse([]byte(tt.doc), "p.yaml")
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: %v, want %q", tt.doc, err, tt.want)
		}
	}
	p, err := Parse([]byte("maxConnectionsPerCgroup: 5\n"), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c, err := p.Compile()
	if err != nil {
		t.Fatal(err)
	}
	if c.Config.MaxConnsCgroup != 5 || c.Config.MaxConnsUid != DefaultMaxConnectionsPerUser {
		t.Errorf("compiled bounds %d, %d; want 5, %d", c.Config.MaxConnsCgroup, c.Config.MaxConnsUid, DefaultMaxConnectionsPerUser)
	}
}

// A policy file replaced by binary junk gets one line saying so, not one
// per line of junk.
func TestBinaryFileIsOneProblem(t *testing.T) {
	junk := make([]byte, 64<<10)
	for i := range junk {
		junk[i] = byte(i*7919 + i/13) // NULs, invalid UTF-8 and newlines all over
	}
	_, err := Parse(junk, "policy.yaml")
	errs := splitErrors(err)
	if len(errs) != 1 {
		t.Fatalf("binary junk gave %d problems, want 1:\n%v", len(errs), err)
	}
	if want := "policy.yaml:1: not a text file (a NUL byte at offset 0): a policy file is YAML text in UTF-8"; err.Error() != want {
		t.Errorf("got %q\nwant %q", err.Error(), want)
	}
}

// A text file with problems on every line gets the first 20, in line
// order, then a count of the rest.
func TestProblemsAreCapped(t *testing.T) {
	for _, tc := range []struct {
		lines int
		last  string
	}{
		{20, "policy.yaml:20: tab character"},
		{21, "policy.yaml: and 1 more problem"},
		{5000, "policy.yaml: and 4980 more problems"},
	} {
		doc := strings.Repeat("\tmode: audit\n", tc.lines)
		_, err := Parse([]byte(doc), "policy.yaml")
		lines := strings.Split(err.Error(), "\n")
		if want := min(tc.lines, 21); len(lines) != want {
			t.Fatalf("%d bad lines: got %d lines of errors, want %d:\n%v", tc.lines, len(lines), want, err)
		}
		for i, l := range lines[:20] {
			if want := fmt.Sprintf("policy.yaml:%d: tab character", i+1); !strings.HasPrefix(l, want) {
				t.Errorf("%d bad lines: line %d is %q, want %q…", tc.lines, i+1, l, want)
			}
		}
		if last := lines[len(lines)-1]; !strings.HasPrefix(last, tc.last) {
			t.Errorf("%d bad lines: last line %q, want %q…", tc.lines, last, tc.last)
		}
	}
}

// TestSyslogUDPMaxBytes: the limit is read, kept through a render, and left
// out of a policy that does not set it (the sink's default applies).
func TestSyslogUDPMaxBytes(t *testing.T) {
	p, err := Parse([]byte("output:\n  targets: [syslog+udp://10.0.0.5:514]\n  syslogUDPMaxBytes: 1472\n"), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if p.Output.SyslogUDPMaxBytes != 1472 {
		t.Fatalf("syslogUDPMaxBytes %d, want 1472", p.Output.SyslogUDPMaxBytes)
	}
	out, err := p.YAML()
	if err != nil || !strings.Contains(string(out), "  syslogUDPMaxBytes: 1472\n") {
		t.Fatalf("rendered (%v):\n%s", err, out)
	}
	if p, err = Parse(out, "p.yaml"); err != nil || p.Output.SyslogUDPMaxBytes != 1472 {
		t.Fatalf("round trip: %v, %d", err, p.Output.SyslogUDPMaxBytes)
	}
}
