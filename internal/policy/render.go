package policy

import (
	"bytes"
	"strconv"

	yaml "gopkg.in/yaml.v3"
)

// render writes the policy as YAML with its keys in schema order: apiVersion,
// kind, mode, requireToken, blockNonHostNetns, refuseForwarded, nftables,
// nftablesAction, maxConnectionsPerCgroup, maxConnectionsPerUser, endpoints,
// credentialPaths, rules. Each rule is name, match (one flow mapping), then
// what it grants. Keys with no value (nil pointers) are left out.
func (p *Policy) render() ([]byte, error) {
	root := mappingNode()
	add := func(m *yaml.Node, key string, v *yaml.Node) {
		m.Content = append(m.Content, strNode(key), v)
	}
	add(root, "apiVersion", strNode(p.APIVersion))
	add(root, "kind", strNode(p.Kind))
	add(root, "mode", strNode(p.Mode))
	for _, b := range []struct {
		key string
		v   *bool
	}{
		{"requireToken", p.RequireToken},
		{"blockNonHostNetns", p.BlockNonHostNetns},
		{"refuseForwarded", p.RefuseForwarded},
		{"nftables", p.Nftables},
	} {
		if b.v != nil {
			add(root, b.key, boolNode(*b.v))
		}
	}
	if p.NftablesAction != "" {
		add(root, "nftablesAction", strNode(p.NftablesAction))
	}
	for _, n := range []struct {
		key string
		v   int
	}{{"maxConnectionsPerCgroup", p.MaxConnectionsPerCgroup}, {"maxConnectionsPerUser", p.MaxConnectionsPerUser}} {
		if n.v != 0 {
			add(root, n.key, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!int", Value: strconv.Itoa(n.v)})
		}
	}
	add(root, "endpoints", strListNode(p.Endpoints))
	add(root, "credentialPaths", strListNode(p.CredentialPaths))
	out := mappingNode()
	add(out, "format", strNode(p.Output.Format))
	add(out, "targets", strListNode(p.Output.Targets))
	if p.Output.SyslogCA != "" {
		add(out, "syslogCA", strNode(p.Output.SyslogCA))
	}
	add(out, "queue", &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!int", Value: strconv.Itoa(p.Output.Queue)})
	add(out, "foldWindow", strNode(p.Output.FoldWindow))
	add(root, "output", out)
	rules := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
	if len(p.Rules) == 0 {
		rules.Style = yaml.FlowStyle
	}
	for _, r := range p.Rules {
		rn := mappingNode()
		add(rn, "name", strNode(r.Name))
		m := mappingNode()
		m.Style = yaml.FlowStyle
		if r.Match.Cgroup != "" {
			add(m, "cgroup", strNode(r.Match.Cgroup))
		}
		if r.Match.Comm != "" {
			add(m, "comm", strNode(r.Match.Comm))
		}
		if r.Match.UID != nil {
			add(m, "uid", &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!int", Value: strconv.FormatUint(uint64(*r.Match.UID), 10)})
		}
		add(rn, "match", m)
		if r.AllowV1 {
			add(rn, "allowV1", boolNode(true))
		}
		if r.AllowNonHostNetns {
			add(rn, "allowNonHostNetns", boolNode(true))
		}
		if r.Deny {
			add(rn, "deny", boolNode(true))
		}
		rules.Content = append(rules.Content, rn)
	}
	add(root, "rules", rules)

	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(root); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

func mappingNode() *yaml.Node { return &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"} }

func strNode(s string) *yaml.Node { return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s} }

func boolNode(b bool) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!bool", Value: strconv.FormatBool(b)}
}

func strListNode(list []string) *yaml.Node {
	n := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
	if len(list) == 0 {
		n.Style = yaml.FlowStyle
	}
	for _, s := range list {
		n.Content = append(n.Content, strNode(s))
	}
	return n
}
