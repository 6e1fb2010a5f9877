package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	// The YAML 1.2 parser sigs.k8s.io/yaml/goyaml.v3 re-exports (its module
	// go.yaml.in/yaml/v3 is a fork of this one); this module is already in
	// go.mod, the fork is not.
	yaml "gopkg.in/yaml.v3"

	"github.com/imdsguard/imdsguard/internal/target"
)

// The keys of each mapping, in schema order.
var (
	policyKeys = []string{"apiVersion", "kind", "mode", "cloud", "requireToken", "blockNonHostNetns", "refuseForwarded", "nftables", "nftablesAction", "maxConnectionsPerCgroup", "maxConnectionsPerUser", "maxTokenTTL", "credentialReadsPerMinute", "endpoints", "credentialPaths", "output", "rules"}
	ruleKeys   = []string{"name", "match", "allowV1", "allowNonHostNetns", "deny", "credentialReadsPerMinute"}
	matchKeys  = []string{"cgroup", "namespace", "pod", "container", "comm", "uid"}
	outputKeys = []string{"format", "targets", "syslogCA", "syslogUDPMaxBytes", "queue", "foldWindow"}
)

// decoder walks a policy document's node tree against the schema, fills in
// a Policy and notes every problem with its line. The walk is the only
// source of truth about the file: nothing else decodes it.
type decoder struct {
	problems
	lines  map[string]int      // key path -> line of the key (of the item, for list items)
	failed map[string]bool     // key paths already reported (wrong type, unknown, duplicate)
	skip   map[*yaml.Node]bool // nodes already reported (aliases, anchors, tags)
}

func newDecoder(source string) *decoder {
	return &decoder{
		problems: problems{source: source},
		lines:    map[string]int{},
		failed:   map[string]bool{},
		skip:     map[*yaml.Node]bool{},
	}
}

// line is the line of a key path, 0 when the file does not have it.
func (d *decoder) line(path string) int { return d.lines[path] }

func (d *decoder) has(path string) bool {
	_, ok := d.lines[path]
	return ok
}

// failedUnder reports whether anything at or below path was refused.
func (d *decoder) failedUnder(path string) bool {
	for p := range d.failed {
		if p == path || strings.HasPrefix(p, path+".") || strings.HasPrefix(p, path+"[") {
			return true
		}
	}
	return false
}

// document parses data into its single document's root node; nil when the
// file is empty or could not be parsed (then the problems say why).
func (d *decoder) document(data []byte) *yaml.Node {
	if !d.scan(data) {
		return nil
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if !errors.Is(err, io.EOF) {
			d.syntax(err, data)
		}
		return nil
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case err == nil:
		d.add(next.Line, "", "a policy file holds one YAML document; a second one starts here")
	case !errors.Is(err, io.EOF):
		d.syntax(err, data)
	}
	if len(doc.Content) == 0 {
		return nil
	}
	return doc.Content[0]
}

// scan refuses, line by line, what the YAML parser would report without a
// line or with a confusing message: invalid UTF-8, tabs and control
// characters (the Unicode line and paragraph separators among them: YAML
// may count them as line breaks, which would make every later line number
// wrong). It reports whether the file is clean.
func (d *decoder) scan(data []byte) bool {
	if msg, line, ok := notText(data); ok {
		// One line for the whole file: a binary file (or one in another
		// encoding) fails on most of its lines, and a line-by-line list
		// would only bury the point.
		d.add(line, "", "%s", msg)
		return false
	}
	clean := true
	for i, line := range bytes.Split(data, []byte("\n")) {
		n := i + 1
		if bytes.IndexByte(line, '\t') >= 0 {
			d.add(n, "", "tab character: YAML indents with spaces, and a policy file may hold no tabs at all")
			clean = false
			continue
		}
		for j, r := range string(line) {
			if r == '\r' && j == len(line)-1 {
				continue // CR only as part of CRLF
			}
			if forbiddenRune(r) {
				d.add(n, "", "control character %U is not allowed", r)
				clean = false
				break
			}
		}
	}
	return clean
}

// notText reports whether data is not UTF-8 text at all (NUL bytes, or
// bytes that are not UTF-8), with the message and the first line that
// shows it.
func notText(data []byte) (msg string, line int, ok bool) {
	if i := bytes.IndexByte(data, 0); i >= 0 {
		return fmt.Sprintf("not a text file (a NUL byte at offset %d): a policy file is YAML text in UTF-8", i), lineOf(data, i), true
	}
	if !utf8.Valid(data) {
		i := invalidUTF8(data)
		return fmt.Sprintf("not valid UTF-8 (first bad byte 0x%02x at offset %d): a policy file is YAML text in UTF-8", data[i], i), lineOf(data, i), true
	}
	return "", 0, false
}

// invalidUTF8 is the offset of the first byte of data that does not start
// a valid UTF-8 sequence (data is known to hold one).
func invalidUTF8(data []byte) int {
	for i := 0; i < len(data); {
		r, n := utf8.DecodeRune(data[i:])
		if r == utf8.RuneError && n <= 1 {
			return i
		}
		i += n
	}
	return 0
}

// lineOf is the 1-based line of the byte at offset i.
func lineOf(data []byte, i int) int { return bytes.Count(data[:i], []byte("\n")) + 1 }

// forbiddenRune reports whether a policy file may not hold r: control
// characters, the Unicode line and paragraph separators, and the
// noncharacters U+FFFE and U+FFFF (a CR is allowed only as part of CRLF).
func forbiddenRune(r rune) bool {
	return r < 0x20 || r >= 0x7f && r <= 0x9f || r == 0x2028 || r == 0x2029 || r == 0xfffe || r == 0xffff
}

// Writable reports whether s can be written as a value in a policy file:
// valid UTF-8, with no character the file may not hold.
func Writable(s string) bool {
	return utf8.ValidString(s) && strings.IndexFunc(s, forbiddenRune) < 0
}

var (
	yamlLineError   = regexp.MustCompile(`(?s)^yaml: line (\d+): (.*)$`)
	yamlError       = regexp.MustCompile(`(?s)^yaml: (.*)$`)
	yamlAnchorError = regexp.MustCompile(`(?s)^yaml: unknown anchor '(.*)' referenced$`)
)

// syntax reports a YAML parser error at the line the parser gives. The
// parser leaves the line out for problems on the first line.
func (d *decoder) syntax(err error, data []byte) {
	msg := err.Error()
	if m := yamlAnchorError.FindStringSubmatch(msg); m != nil {
		line := 1
		for i, l := range bytes.Split(data, []byte("\n")) {
			if bytes.Contains(l, []byte("*"+m[1])) {
				line = i + 1
				break
			}
		}
		d.add(line, "", "aliases (*%s) are not supported; write the value out", m[1])
		return
	}
	if m := yamlLineError.FindStringSubmatch(msg); m != nil {
		n, _ := strconv.Atoi(m[1])
		if yamlParserProblems[m[2]] {
			n++
		}
		// A problem at the end of the file is reported on the line after it.
		if last := bytes.Count(bytes.TrimRight(data, "\r\n"), []byte("\n")) + 1; n > last {
			n = last
		}
		d.add(n, "", "YAML syntax error: %s", m[2])
		return
	}
	if m := yamlError.FindStringSubmatch(msg); m != nil {
		msg = m[1]
	}
	d.add(1, "", "YAML syntax error: %s", msg)
}

// yamlParserProblems are the problems the YAML parser (not its scanner)
// reports. For those it gives the 0-based line of the enclosing block's
// start, or of the offending token; syntax adds the 1. Scanner problems
// come with 1-based lines. Either way, no line means the first line.
var yamlParserProblems = map[string]bool{
	"did not find expected <stream-start>":   true,
	"did not find expected <document start>": true,
	"found undefined tag handle":             true,
	"did not find expected node content":     true,
	"did not find expected '-' indicator":    true,
	"did not find expected key":              true,
	"did not find expected ',' or ']'":       true,
	"did not find expected ',' or '}'":       true,
	"found duplicate %YAML directive":        true,
	"found incompatible YAML document":       true,
	"found duplicate %TAG directive":         true,
}

// checkNodes refuses, anywhere in the tree, what the schema never needs:
// anchors, aliases, merge keys and explicit tags. The walk then skips the
// nodes reported here.
func (d *decoder) checkNodes(n *yaml.Node, path string) {
	switch {
	case n.Kind == yaml.AliasNode:
		d.add(n.Line, path, "aliases (*%s) are not supported; write the value out", n.Value)
		d.skip[n], d.failed[path] = true, true
		return
	case n.Anchor != "":
		d.add(n.Line, path, "anchors (&%s) are not supported", n.Anchor)
		d.skip[n], d.failed[path] = true, true
		return
	case n.Style&yaml.TaggedStyle != 0:
		d.add(n.Line, path, "tags (%s) are not supported; quote the value if you mean a string", n.Tag)
		d.skip[n], d.failed[path] = true, true
		return
	}
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			kp := path
			if k.Kind == yaml.ScalarNode {
				if k.Tag == "!!merge" {
					d.add(k.Line, path, "merge keys (<<) are not supported; write the keys out")
					d.skip[k], d.failed[path] = true, true
					continue
				}
				kp = keyPath(path, k.Value)
			}
			d.checkNodes(k, kp)
			d.checkNodes(v, kp)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			d.checkNodes(c, indexPath(path, i))
		}
	}
}

// describe names a node's kind and value for "want X, got Y".
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	}
	switch n.Tag {
	case "!!null":
		return "no value"
	case "!!bool":
		return "the boolean " + n.Value
	case "!!int", "!!float":
		return "the number " + n.Value
	case "!!str":
		return "the string " + quote(n.Value)
	case "!!timestamp":
		return "the timestamp " + n.Value
	}
	return quote(n.Value)
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.Tag == "!!null" }

// wrongType reports a value of the wrong type.
func (d *decoder) wrongType(n *yaml.Node, path, want string) {
	d.failed[path] = true
	hint := ""
	if want == "a string" && n.Kind == yaml.ScalarNode && n.Tag != "!!null" && n.Tag != "!!str" {
		hint = fmt.Sprintf(" (quote it if you mean the string %q)", n.Value)
	}
	d.add(n.Line, path, "want %s, got %s%s", want, describe(n), hint)
}

// mapping walks a mapping's keys: it refuses keys that are not strings,
// duplicates and unknown keys, notes each known key's line and hands its
// value to fn.
func (d *decoder) mapping(n *yaml.Node, path string, known []string, fn func(key, path string, v *yaml.Node)) {
	first := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if d.skip[k] {
			continue
		}
		if k.Kind != yaml.ScalarNode || k.Tag != "!!str" {
			d.add(k.Line, path, "keys must be plain strings, got %s", describe(k))
			d.failed[path] = true
			continue
		}
		key := k.Value
		kp := keyPath(path, key)
		if l, dup := first[key]; dup {
			d.add(k.Line, kp, "duplicate key (first at line %d)", l)
			d.failed[kp] = true
			continue
		}
		first[key] = k.Line
		if !slices.Contains(known, key) {
			d.add(k.Line, kp, "unknown key %q%s", key, unknownKeyHint(key, known))
			d.failed[kp] = true
			continue
		}
		d.lines[kp] = k.Line
		if d.skip[v] {
			d.failed[kp] = true
			continue
		}
		fn(key, kp, v)
	}
}

func unknownKeyHint(key string, known []string) string {
	switch {
	case known[0] == ruleKeys[0] && slices.Contains(matchKeys, key):
		return fmt.Sprintf(" (it belongs under match: match: {%s: …})", key)
	case known[0] == matchKeys[0] && slices.Contains(ruleKeys, key):
		return " (it belongs to the rule, next to match, not under it)"
	}
	if c, ok := closest(key, known); ok {
		return fmt.Sprintf(" (did you mean %q?)", c)
	}
	return " (known keys: " + strings.Join(known, ", ") + ")"
}

func (d *decoder) str(n *yaml.Node, path string) (string, bool) {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!str" {
		return n.Value, true
	}
	d.wrongType(n, path, "a string")
	return "", false
}

func (d *decoder) boolean(n *yaml.Node, path string) (bool, bool) {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!bool" {
		return strings.EqualFold(n.Value, "true"), true
	}
	d.wrongType(n, path, "a boolean (true or false)")
	return false, false
}

func (d *decoder) boolPtr(n *yaml.Node, path string) *bool {
	b, ok := d.boolean(n, path)
	if !ok {
		return nil
	}
	return &b
}

var decimal = regexp.MustCompile(`^(0|[1-9][0-9]*)$`)

func (d *decoder) uid(n *yaml.Node, path string) (uint32, bool) {
	const want = "an integer from 0 to 4294967295"
	if n.Kind == yaml.ScalarNode && n.Tag == "!!int" {
		if decimal.MatchString(n.Value) {
			if u, err := strconv.ParseUint(n.Value, 10, 32); err == nil {
				return uint32(u), true
			}
		} else if !strings.HasPrefix(n.Value, "-") {
			d.failed[path] = true
			d.add(n.Line, path, "want %s, got the number %s (write it in decimal, without a sign or leading zeros)", want, n.Value)
			return 0, false
		}
	}
	d.wrongType(n, path, want)
	return 0, false
}

// strList decodes a list of strings. An item that is not a string is
// reported and left "" so the indexes stay those of the file.
func (d *decoder) strList(n *yaml.Node, path string) []string {
	if n.Kind != yaml.SequenceNode {
		d.wrongType(n, path, "a list of strings")
		return nil
	}
	out := make([]string, 0, len(n.Content))
	for i, item := range n.Content {
		ip := indexPath(path, i)
		d.lines[ip] = item.Line
		s := ""
		if d.skip[item] {
			d.failed[ip] = true
		} else {
			s, _ = d.str(item, ip)
		}
		out = append(out, s)
	}
	return out
}

// policy walks the document's root, which must be a mapping of the
// policy's keys.
func (d *decoder) policy(root *yaml.Node, p *Policy) {
	d.checkNodes(root, "")
	if d.skip[root] || isNull(root) {
		return
	}
	if root.Kind != yaml.MappingNode {
		d.add(root.Line, "", "want a mapping of policy keys (apiVersion, kind, mode, …) at the top level, got %s", describe(root))
		return
	}
	d.mapping(root, "", policyKeys, func(key, path string, v *yaml.Node) {
		if isNull(v) {
			return // a top-level key without a value takes its default
		}
		switch key {
		case "apiVersion":
			if s, ok := d.str(v, path); ok {
				if s != APIVersion {
					d.add(v.Line, path, "%q is not supported (want %q)", s, APIVersion)
				}
				p.APIVersion = s
			}
		case "kind":
			if s, ok := d.str(v, path); ok {
				if s != Kind {
					d.add(v.Line, path, "%q is not supported (want %q)", s, Kind)
				}
				p.Kind = s
			}
		case "mode":
			if s, ok := d.str(v, path); ok {
				if err := ValidateMode(s); err != nil {
					d.add(v.Line, path, "%v", err)
				}
				p.Mode = s
			}
		case "cloud":
			if s, ok := d.str(v, path); ok {
				p.Cloud = s
			}
		case "maxTokenTTL":
			p.MaxTokenTTL = d.boundedInt(v, path, 1, MaxTokenTTL)
		case "credentialReadsPerMinute":
			p.CredentialReadsPerMinute = d.boundedInt(v, path, 1, MaxCredentialReadsPerMinute)
		case "requireToken":
			p.RequireToken = d.boolPtr(v, path)
		case "blockNonHostNetns":
			p.BlockNonHostNetns = d.boolPtr(v, path)
		case "refuseForwarded":
			p.RefuseForwarded = d.boolPtr(v, path)
		case "nftables":
			p.Nftables = d.boolPtr(v, path)
		case "nftablesAction":
			if s, ok := d.str(v, path); ok {
				if s != NftablesDrop && s != NftablesReject {
					d.add(v.Line, path, "%q is not an action (want %q or %q)", s, NftablesDrop, NftablesReject)
				}
				p.NftablesAction = s
			}
		case "maxConnectionsPerCgroup":
			p.MaxConnectionsPerCgroup = d.boundedInt(v, path, 1, MaxConnections)
		case "maxConnectionsPerUser":
			p.MaxConnectionsPerUser = d.boundedInt(v, path, 1, MaxConnections)
		case "endpoints":
			p.Endpoints = d.strList(v, path)
		case "credentialPaths":
			p.CredentialPaths = d.strList(v, path)
		case "output":
			d.output(v, path, &p.Output)
		case "rules":
			p.Rules = d.rules(v, path)
		}
	})
}

// boundedInt decodes a decimal integer from lo to hi; 0 (and a problem
// noted) otherwise.
func (d *decoder) boundedInt(v *yaml.Node, path string, lo, hi int) int {
	if v.Kind == yaml.ScalarNode && v.Tag == "!!int" && decimal.MatchString(v.Value) {
		n, err := strconv.Atoi(v.Value)
		if err == nil && n >= lo && n <= hi {
			return n
		}
	}
	d.add(v.Line, path, "want an integer from %d to %d, got %s", lo, hi, describe(v))
	return 0
}

// rules decodes the rule list. A rule that could not be decoded is kept
// (zero) so the indexes stay those of the file.
func (d *decoder) rules(n *yaml.Node, path string) []Rule {
	if n.Kind != yaml.SequenceNode {
		d.wrongType(n, path, "a list of rules")
		return nil
	}
	out := make([]Rule, len(n.Content))
	for i, item := range n.Content {
		rp := indexPath(path, i)
		d.lines[rp] = item.Line
		d.rule(item, rp, &out[i])
	}
	return out
}

func (d *decoder) rule(n *yaml.Node, path string, r *Rule) {
	if d.skip[n] {
		d.failed[path] = true
		return
	}
	if n.Kind != yaml.MappingNode {
		d.wrongType(n, path, "a mapping (a rule: {name: …, match: {…}, deny: true})")
		return
	}
	d.mapping(n, path, ruleKeys, func(key, kp string, v *yaml.Node) {
		switch key {
		case "name":
			r.Name, _ = d.str(v, kp)
		case "match":
			d.match(v, kp, &r.Match)
		case "allowV1":
			r.AllowV1, _ = d.boolean(v, kp)
		case "allowNonHostNetns":
			r.AllowNonHostNetns, _ = d.boolean(v, kp)
		case "deny":
			r.Deny, _ = d.boolean(v, kp)
		case "credentialReadsPerMinute":
			r.CredentialReadsPerMinute = d.boundedInt(v, kp, 1, MaxCredentialReadsPerMinute)
		}
	})
}

func (d *decoder) match(n *yaml.Node, path string, m *Match) {
	if n.Kind != yaml.MappingNode {
		d.wrongType(n, path, "a mapping (e.g. {cgroup: \"/system.slice/backup.service\"}; {} matches every process)")
		return
	}
	d.mapping(n, path, matchKeys, func(key, kp string, v *yaml.Node) {
		switch key {
		case "cgroup":
			m.Cgroup, _ = d.str(v, kp)
		case "namespace":
			m.Namespace, _ = d.str(v, kp)
		case "pod":
			m.Pod, _ = d.str(v, kp)
		case "container":
			m.Container, _ = d.str(v, kp)
		case "comm":
			m.Comm, _ = d.str(v, kp)
		case "uid":
			if u, ok := d.uid(v, kp); ok {
				m.UID = &u
			}
		}
	})
}

// output decodes the output section; targets are checked by their own
// rules (internal/target) so that flags and file say the same.
func (d *decoder) output(n *yaml.Node, path string, o *Output) {
	if n.Kind != yaml.MappingNode {
		d.wrongType(n, path, "a mapping (e.g. {format: json, targets: [stdout]})")
		return
	}
	d.mapping(n, path, outputKeys, func(key, kp string, v *yaml.Node) {
		switch key {
		case "format":
			if s, ok := d.str(v, kp); ok {
				if err := target.CheckFormat(s); err != nil {
					d.add(v.Line, kp, "%v", err)
				}
				o.Format = s
			}
		case "targets":
			o.Targets = d.strList(v, kp)
			for i, t := range o.Targets {
				if _, err := target.Parse(t); err != nil {
					d.add(v.Content[i].Line, fmt.Sprintf("%s[%d]", kp, i), "%v", err)
				}
			}
		case "syslogCA":
			o.SyslogCA, _ = d.str(v, kp)
		case "syslogUDPMaxBytes":
			n, err := strconv.Atoi(v.Value)
			if v.Kind != yaml.ScalarNode || v.Tag != "!!int" || !decimal.MatchString(v.Value) || err != nil {
				d.add(v.Line, kp, "want an integer from %d to %d (octets), got %s", target.SyslogUDPMaxBytesMin, target.SyslogUDPMaxBytesMax, describe(v))
				return
			}
			if err := target.CheckSyslogUDPMaxBytes(n); err != nil {
				d.add(v.Line, kp, "%v", err)
			}
			o.SyslogUDPMaxBytes = n
		case "queue":
			if v.Kind == yaml.ScalarNode && v.Tag == "!!int" && decimal.MatchString(v.Value) {
				q, err := strconv.Atoi(v.Value)
				if err == nil && q >= 1 && q <= 10_000_000 {
					o.Queue = q
					return
				}
			}
			d.add(v.Line, kp, "want an integer from 1 to 10000000, got %s", describe(v))
		case "foldWindow":
			if s, ok := d.str(v, kp); ok {
				w, err := time.ParseDuration(s)
				if err != nil || w < 0 {
					d.add(v.Line, kp, "%q is not a duration like \"10s\" (\"0s\" reports every event)", s)
				}
				o.FoldWindow = s
			}
		}
	})
}
