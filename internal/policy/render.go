package policy

import (
	"bytes"
	"strconv"

	yaml "gopkg.in/yaml.v3"
)

// render writes the policy as YAML with its keys in schema order: apiVersion,
// kind, mode, cloud, requireToken, blockNonHostNetns, refuseForwarded, nftables,
// nftablesAction, maxConnectionsPerCgroup, maxConnectionsPerUser, maxTokenTTL,
// credentialReadsPerMinute, endpoints, credentialPaths, rules. Each rule is name, match (one flow mapping), then
// what it grants. Keys with no value (nil pointers) are left out.
func (p *Policy) render() ([]byte, error) {
	root := mappingNode()
	addKey(root, "apiVersion", strNode(p.APIVersion))
	addKey(root, "kind", strNode(p.Kind))
	addKey(root, "mode", strNode(p.Mode))
	addKey(root, "cloud", strNode(p.Cloud))
	p.renderSwitches(root)
	addKey(root, "endpoints", strListNode(p.Endpoints))
	addKey(root, "credentialPaths", strListNode(p.CredentialPaths))
	addKey(root, "output", p.Output.render())
	rules := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
	if len(p.Rules) == 0 {
		rules.Style = yaml.FlowStyle
	}
	for _, r := range p.Rules {
		rules.Content = append(rules.Content, r.render())
	}
	addKey(root, "rules", rules)

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

// renderSwitches adds the top-level switches and limits that are set.
func (p *Policy) renderSwitches(root *yaml.Node) {
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
			addKey(root, b.key, boolNode(*b.v))
		}
	}
	if p.NftablesAction != "" {
		addKey(root, "nftablesAction", strNode(p.NftablesAction))
	}
	for _, n := range []struct {
		key string
		v   int
	}{{"maxConnectionsPerCgroup", p.MaxConnectionsPerCgroup}, {"maxConnectionsPerUser", p.MaxConnectionsPerUser}, {"maxTokenTTL", p.MaxTokenTTL}, {"credentialReadsPerMinute", p.CredentialReadsPerMinute}} {
		if n.v != 0 {
			addKey(root, n.key, intNode(uint64(n.v)))
		}
	}
}

func (o Output) render() *yaml.Node {
	out := mappingNode()
	addKey(out, "format", strNode(o.Format))
	addKey(out, "targets", strListNode(o.Targets))
	if o.SyslogCA != "" {
		addKey(out, "syslogCA", strNode(o.SyslogCA))
	}
	if o.SyslogUDPMaxBytes != 0 {
		addKey(out, "syslogUDPMaxBytes", intNode(uint64(o.SyslogUDPMaxBytes)))
	}
	addKey(out, "queue", intNode(uint64(o.Queue)))
	addKey(out, "foldWindow", strNode(o.FoldWindow))
	return out
}

// render is name, match (one flow mapping), then what the rule grants.
func (r Rule) render() *yaml.Node {
	rn := mappingNode()
	addKey(rn, "name", strNode(r.Name))
	m := mappingNode()
	m.Style = yaml.FlowStyle
	if r.Match.Cgroup != "" {
		addKey(m, "cgroup", strNode(r.Match.Cgroup))
	}
	for _, n := range []struct{ key, v string }{{"namespace", r.Match.Namespace}, {"pod", r.Match.Pod}, {"container", r.Match.Container}, {"comm", r.Match.Comm}} {
		if n.v != "" {
			addKey(m, n.key, strNode(n.v))
		}
	}
	if r.Match.UID != nil {
		addKey(m, "uid", intNode(uint64(*r.Match.UID)))
	}
	addKey(rn, "match", m)
	for _, g := range []struct {
		key string
		on  bool
	}{{"allowV1", r.AllowV1}, {"allowNonHostNetns", r.AllowNonHostNetns}, {"deny", r.Deny}} {
		if g.on {
			addKey(rn, g.key, boolNode(true))
		}
	}
	if r.CredentialReadsPerMinute != 0 {
		addKey(rn, "credentialReadsPerMinute", intNode(uint64(r.CredentialReadsPerMinute)))
	}
	return rn
}

func addKey(m *yaml.Node, key string, v *yaml.Node) {
	m.Content = append(m.Content, strNode(key), v)
}

func intNode(v uint64) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!int", Value: strconv.FormatUint(v, 10)}
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
