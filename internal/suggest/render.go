package suggest

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"

	yaml "gopkg.in/yaml.v3"

	"github.com/imdsguard/imdsguard/internal/policy"
)

// render writes the policy: the base document (or a fresh one: mode
// enforce, every other key its default) with the suggestions placed among
// its rules, the header and the left-out section as comments, so the file
// is the whole record of what suggest saw.
func render(doc *yaml.Node, sugg []*suggestion, header, footer []string) ([]byte, error) {
	if doc == nil {
		doc = freshDocument()
	}
	seq := rulesSequence(doc.Content[0])
	seq.Content = placeRules(seq.Content, sugg)
	if len(seq.Content) > 0 {
		seq.Style = 0 // a base "rules: []" becomes a block list
	}
	doc.HeadComment = joinComments(lines(header), doc.HeadComment)
	doc.FootComment = joinComments(doc.FootComment, lines(footer))

	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return nil, fmt.Errorf("rendering the policy: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("rendering the policy: %w", err)
	}
	if !bytes.HasSuffix(b.Bytes(), []byte("\n")) {
		b.WriteByte('\n') // the encoder ends a closing comment without one
	}
	return b.Bytes(), nil
}

func freshDocument() *yaml.Node {
	root := mappingNode()
	addKey(root, "apiVersion", strNode(policy.APIVersion))
	addKey(root, "kind", strNode(policy.Kind))
	addKey(root, "mode", strNode(policy.ModeEnforce))
	return &yaml.Node{Kind: yaml.DocumentNode, Content: []*yaml.Node{root}}
}

// rulesSequence returns the root's rules list, adding it (or replacing a
// key without a value) when there is none.
func rulesSequence(root *yaml.Node) *yaml.Node {
	for i := 0; i+1 < len(root.Content); i += 2 {
		if root.Content[i].Value != "rules" {
			continue
		}
		v := root.Content[i+1]
		if v.Kind != yaml.SequenceNode {
			// "rules:" with no value: the strict parse allowed only null here
			v = &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq", LineComment: v.LineComment}
			root.Content[i+1] = v
		}
		return v
	}
	seq := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
	addKey(root, "rules", seq)
	return seq
}

// placeRules puts each new rule before the base rule at its pos (or at the
// end), and extends the base rules that are amended.
func placeRules(base []*yaml.Node, sugg []*suggestion) []*yaml.Node {
	out := make([]*yaml.Node, 0, len(base)+len(sugg))
	for i := 0; i <= len(base); i++ {
		for _, s := range sugg {
			if s.amend < 0 && s.pos == i {
				out = append(out, newRuleNode(s))
			}
		}
		if i == len(base) {
			break
		}
		for _, s := range sugg {
			if s.amend == i {
				amendRuleNode(base[i], s)
			}
		}
		out = append(out, base[i])
	}
	return out
}

// newRuleNode renders a rule as policy.YAML does: name, match as one flow
// mapping, then what it grants.
func newRuleNode(s *suggestion) *yaml.Node {
	r := s.rule
	n := mappingNode()
	n.HeadComment = lines(ruleComment(s, "suggested for"))
	addKey(n, "name", strNode(r.Name))
	m := mappingNode()
	m.Style = yaml.FlowStyle
	for _, k := range []struct{ key, v string }{
		{"cgroup", r.Match.Cgroup}, {"namespace", r.Match.Namespace}, {"pod", r.Match.Pod}, {"container", r.Match.Container}, {"comm", r.Match.Comm},
	} {
		if k.v != "" {
			v := strNode(k.v)
			v.Style = yaml.DoubleQuotedStyle
			addKey(m, k.key, v)
		}
	}
	if r.Match.UID != nil {
		addKey(m, "uid", &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!int", Value: strconv.FormatUint(uint64(*r.Match.UID), 10)})
	}
	addKey(n, "match", m)
	if r.AllowV1 {
		addKey(n, grantV1, boolNode(true))
	}
	if r.AllowNonHostNetns {
		addKey(n, grantNetns, boolNode(true))
	}
	if r.CredentialReadsPerMinute != 0 {
		addKey(n, "credentialReadsPerMinute", &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!int", Value: strconv.Itoa(r.CredentialReadsPerMinute)})
	}
	return n
}

// amendRuleNode sets the grants a base rule lacks, keeping its keys and
// comments.
func amendRuleNode(n *yaml.Node, s *suggestion) {
	for _, g := range []struct {
		key string
		on  bool
	}{{grantV1, s.rule.AllowV1}, {grantNetns, s.rule.AllowNonHostNetns}} {
		if g.on {
			setKey(n, g.key, boolNode(true))
		}
	}
	n.HeadComment = joinComments(n.HeadComment, lines(ruleComment(s, "extended by imdsguard suggest for")))
}

func setKey(m *yaml.Node, key string, v *yaml.Node) {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			m.Content[i+1] = v
			return
		}
	}
	addKey(m, key, v)
}

func addKey(m *yaml.Node, key string, v *yaml.Node) {
	m.Content = append(m.Content, strNode(key), v)
}

func mappingNode() *yaml.Node { return &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"} }

func strNode(s string) *yaml.Node { return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s} }

func boolNode(b bool) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!bool", Value: strconv.FormatBool(b)}
}

// lines joins comment lines ("# …") as a yaml.Node comment.
func lines(ls []string) string { return strings.Join(ls, "\n") }

// joinComments joins two node comments, a blank comment line between.
func joinComments(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	}
	return a + "\n#\n" + b
}
