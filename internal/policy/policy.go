// Package policy parses, validates and compiles imdsguard's policy file.
//
// Data flows one way: file -> Parse (strict: unknown keys are errors) ->
// Policy with every default filled in -> Compile -> the entries the loader
// writes into the kernel's maps.
package policy

import (
	_ "embed"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path"
	"slices"
	"strings"
	"syscall"

	"github.com/imdsguard/imdsguard/bpf"
	"github.com/imdsguard/imdsguard/internal/cloud"
	"github.com/imdsguard/imdsguard/internal/kernelpolicy"
	"github.com/imdsguard/imdsguard/internal/target"
)

// APIVersion and Kind identify a policy document.
const (
	APIVersion = "imdsguard.io/v1"
	Kind       = "Policy"
)

// What the nftables layer does with packets it stops.
const (
	NftablesDrop   = "drop"
	NftablesReject = "reject" // a TCP reset
)

// Modes.
const (
	ModeEnforce = "enforce"
	ModeAudit   = "audit"
)

// Output says where events go and how. Command-line flags given
// explicitly override it. It is read at start: a reload that changes it is
// logged, and the change takes effect at the next restart.
type Output struct {
	Format   string   `json:"format,omitempty"`   // json (default) or ocsf
	Targets  []string `json:"targets,omitempty"`  // default [stdout]
	SyslogCA string   `json:"syslogCA,omitempty"` // CA of a syslog+tls collector
	// SyslogUDPMaxBytes bounds a syslog+udp message (0: the sink's
	// default, 2048 octets, RFC 5426).
	SyslogUDPMaxBytes int    `json:"syslogUDPMaxBytes,omitempty"`
	Queue             int    `json:"queue,omitempty"`      // events a network target holds while down (default 10000)
	FoldWindow        string `json:"foldWindow,omitempty"` // default 10s; 0s reports every event
}

// Defaults of the connection bounds: far above what an IMDS client holds
// (one or two), far below the socket map's 65536.
const (
	DefaultMaxConnectionsPerCgroup = 128
	DefaultMaxConnectionsPerUser   = 512
	// MaxConnections is the most either bound may be: the socket map's size.
	MaxConnections = 65536
)

// MaxTokenTTL is the longest token life any profile's service grants
// (AWS's and Alibaba's: six hours); maxTokenTTL may lower it.
const MaxTokenTTL = 21600

// MaxCredentialReadsPerMinute is the largest credentialReadsPerMinute.
const MaxCredentialReadsPerMinute = 1000000

//go:embed default.yaml
var defaultYAML []byte

// Policy is the effective policy. The YAML key names are a public contract;
// docs/policy.md describes every key.
//
// Keys for later features are not accepted until the daemon enforces them:
// a policy that asks for protection the daemon cannot give must fail to
// load rather than run with less.
type Policy struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Mode       string `json:"mode"`
	// Cloud names the metadata service's profile (internal/cloud), or
	// auto: the cloud detected at start.
	Cloud string `json:"cloud"`
	// Profile is the profile Cloud resolves to; its endpoints, credential
	// paths and proof are the defaults of the keys below.
	Profile cloud.Profile `json:"-"`
	// RequireToken refuses requests without the profile's proof (AWS's
	// token, GCP's Metadata-Flavor header, ...).
	RequireToken      *bool  `json:"requireToken,omitempty"`
	BlockNonHostNetns *bool  `json:"blockNonHostNetns,omitempty"`
	RefuseForwarded   *bool  `json:"refuseForwarded,omitempty"`
	Nftables          *bool  `json:"nftables,omitempty"`
	NftablesAction    string `json:"nftablesAction,omitempty"`
	// MaxConnectionsPerCgroup and MaxConnectionsPerUser bound the IMDS
	// connections one cgroup, and one non-root uid, may hold open, so that
	// no workload can fill the kernel's socket map for the others.
	MaxConnectionsPerCgroup int `json:"maxConnectionsPerCgroup,omitempty"`
	MaxConnectionsPerUser   int `json:"maxConnectionsPerUser,omitempty"`
	// MaxTokenTTL caps the life (seconds) a token PUT may ask for, where
	// the profile has tokens; 0 leaves the service's own cap.
	MaxTokenTTL int `json:"maxTokenTTL,omitempty"`
	// CredentialReadsPerMinute bounds the credential reads one cgroup may
	// make in a minute; 0: no bound. SDKs read credentials a few times an
	// hour; a loop reading them is someone taking them.
	CredentialReadsPerMinute int      `json:"credentialReadsPerMinute,omitempty"`
	Endpoints                []string `json:"endpoints"`
	CredentialPaths          []string `json:"credentialPaths"`
	Output                   Output   `json:"output"`
	// Rules are exceptions to the settings above, for the processes they
	// match; the first matching rule wins. Never nil after Parse.
	Rules []Rule `json:"rules"`
}

// Rule is one exception: the processes Match selects are denied all IMDS
// access (Deny), or may make token-less requests (AllowV1) and/or connect
// from another network namespace (AllowNonHostNetns). A rule replaces the
// defaults only in what it grants.
type Rule struct {
	Name              string `json:"name"`
	Match             Match  `json:"match"`
	AllowV1           bool   `json:"allowV1,omitempty"`
	AllowNonHostNetns bool   `json:"allowNonHostNetns,omitempty"`
	Deny              bool   `json:"deny,omitempty"`
	// CredentialReadsPerMinute replaces the policy's bound for the
	// processes the rule matches (0: the policy's).
	CredentialReadsPerMinute int `json:"credentialReadsPerMinute,omitempty"`
}

// Match selects processes. Its fields combine with AND; a zero Match
// matches every process.
//
// Namespace, Pod and Container are globs (a cgroup glob segment's syntax) on
// the names the container runtime reports for the container whose id is in
// the cgroup's path; they match only a kubelet pod's container cgroups
// (containerid.PodContainer) and are answered in userspace, when the
// controller lists the rules that apply to a cgroup (see Identity).
type Match struct {
	Cgroup    string  `json:"cgroup,omitempty"` // glob on the cgroup v2 path (see MatchCgroup)
	Namespace string  `json:"namespace,omitempty"`
	Pod       string  `json:"pod,omitempty"`
	Container string  `json:"container,omitempty"`
	Comm      string  `json:"comm,omitempty"` // the process name, exactly (at most 15 bytes)
	UID       *uint32 `json:"uid,omitempty"`
}

// Default returns the embedded default policy, cloud auto resolving to
// detected (a cloud.Detect result's Cloud).
func Default(detected string) (*Policy, error) {
	p, err := ParseIn(defaultYAML, "<embedded default>", detected)
	if err != nil {
		return nil, fmt.Errorf("embedded default policy: %w", err)
	}
	return p, nil
}

// DefaultYAML returns the embedded default policy file.
func DefaultYAML() []byte { return append([]byte(nil), defaultYAML...) }

// Load reads and parses a policy file, cloud auto resolving to detected.
func Load(path, detected string) (*Policy, error) {
	data, err := readRegular(path, MaxFileBytes)
	if err != nil {
		return nil, fmt.Errorf("reading policy: %w", err)
	}
	return ParseIn(data, path, detected)
}

// MaxFileBytes bounds a policy file; real ones are a few KiB.
const MaxFileBytes = 1 << 20

// readRegular reads a regular file of at most max bytes. It opens with
// O_NONBLOCK and checks the type before reading, so a FIFO, a device or a
// socket put in the policy's place fails at once instead of blocking the
// daemon in open() or read().
func readRegular(path string, max int64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file (%s)", path, st.Mode().Type())
	}
	if st.Size() > max {
		return nil, fmt.Errorf("%s has %d bytes, more than the %d a policy may have", path, st.Size(), max)
	}
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("%s grew past the %d bytes a policy may have while being read", path, max)
	}
	return data, nil
}

// Parse decodes a policy strictly, fills in defaults and validates it.
// source names the file in messages. Every problem is reported at once:
// the error joins one *ParseError per problem, each naming the file, line
// and key ("policy.yaml:7: rules[1].match.cgroup: …"). cloud auto resolves
// to aws, as on an EC2 instance: Parse is for tools and tests that have no
// node; the daemon parses with ParseIn and the cloud it detected.
func Parse(data []byte, source string) (*Policy, error) {
	return ParseIn(data, source, cloud.AWS)
}

// ParseIn is Parse with cloud auto resolving to detected.
func ParseIn(data []byte, source, detected string) (*Policy, error) {
	d := newDecoder(source)
	var p Policy
	if root := d.document(data); root != nil {
		d.policy(root, &p)
	}
	requireTokenSet := p.RequireToken != nil
	p.resolveProfile(detected)
	p.fillDefaults()
	d.validateCloud(&p, requireTokenSet)
	d.validate(&p)
	if err := d.err(); err != nil {
		return nil, err
	}
	return &p, nil
}

func (p *Policy) fillDefaults() {
	if p.APIVersion == "" {
		p.APIVersion = APIVersion
	}
	if p.Kind == "" {
		p.Kind = Kind
	}
	if p.Mode == "" {
		p.Mode = ModeEnforce
	}
	if p.NftablesAction == "" {
		p.NftablesAction = NftablesDrop
	}
	if p.Output.Format == "" {
		p.Output.Format = target.FormatJSON
	}
	if len(p.Output.Targets) == 0 {
		p.Output.Targets = []string{"stdout"}
	}
	if p.Output.Queue == 0 {
		p.Output.Queue = 10000
	}
	if p.MaxConnectionsPerCgroup == 0 {
		p.MaxConnectionsPerCgroup = DefaultMaxConnectionsPerCgroup
	}
	if p.MaxConnectionsPerUser == 0 {
		p.MaxConnectionsPerUser = DefaultMaxConnectionsPerUser
	}
	if p.Output.FoldWindow == "" {
		p.Output.FoldWindow = "10s"
	}
	if p.RequireToken == nil {
		proof := p.Profile.HasProof()
		p.RequireToken = &proof
	}
	for _, b := range []**bool{&p.BlockNonHostNetns, &p.RefuseForwarded, &p.Nftables} {
		if *b == nil {
			t := true
			*b = &t
		}
	}
	if p.CredentialPaths == nil {
		p.CredentialPaths = slices.Clone(p.Profile.CredentialPaths)
	}
	if p.Endpoints == nil {
		p.Endpoints = slices.Clone(p.Profile.Endpoints)
	}
	if p.Rules == nil {
		p.Rules = []Rule{}
	}
}

// maxCredentialPaths is how many prefixes the kernel's config holds.
const maxCredentialPaths = 8

// CredentialPrefix turns a credential path ("/latest/meta-data/iam/info")
// into what the kernel matches: the path after its version segment, lower
// case, without a trailing slash ("meta-data/iam/info"). The kernel matches
// it under any version ("/2021-07-15/…", "/1.0/…") and at a segment
// boundary, so "…/security-credentials" covers the listing and every role.
func CredentialPrefix(p string) (string, error) {
	if !strings.HasPrefix(p, "/") {
		return "", fmt.Errorf("%q must start with \"/<version>/\", e.g. \"/latest/meta-data/iam/info\"", p)
	}
	clean := path.Clean(p)
	_, rest, ok := strings.Cut(strings.TrimPrefix(clean, "/"), "/")
	if !ok || rest == "" {
		return "", fmt.Errorf("%q names no path under its version segment", p)
	}
	if strings.ContainsAny(rest, "%?#") {
		return "", fmt.Errorf("%q: write the path decoded, without query or fragment", p)
	}
	if len(rest) > bpf.PrefixMax {
		return "", fmt.Errorf("%q: the part after the version is longer than %d bytes", p, bpf.PrefixMax)
	}
	for _, c := range []byte(rest) {
		if c <= 0x20 || c >= 0x7f {
			return "", fmt.Errorf("%q: only printable ASCII is allowed", p)
		}
	}
	return strings.ToLower(rest), nil
}

// ValidateMode checks a mode name.
func ValidateMode(m string) error {
	if m != ModeEnforce && m != ModeAudit {
		return fmt.Errorf("%q is not a mode (want %q or %q)", m, ModeEnforce, ModeAudit)
	}
	return nil
}

// ParseEndpoint parses "IP:PORT" or "[IPv6]:PORT". An IPv4-mapped IPv6
// address is the IPv4 endpoint it maps.
func ParseEndpoint(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q is not an address:port (e.g. \"169.254.169.254:80\" or \"[fd00:ec2::254]:80\")", s)
	}
	if ap.Port() == 0 {
		return netip.AddrPort{}, fmt.Errorf("%q: port must not be 0", s)
	}
	addr := ap.Addr().Unmap()
	if addr.Zone() != "" {
		return netip.AddrPort{}, fmt.Errorf("%q: zoned addresses are not supported", s)
	}
	if addr.IsUnspecified() || addr.IsMulticast() {
		return netip.AddrPort{}, fmt.Errorf("%q: not a unicast address", s)
	}
	return netip.AddrPortFrom(addr, ap.Port()), nil
}

// LoadOrDefault reads and validates the policy file at path, or takes the
// embedded default for "", then applies modeOverride (--mode) if set.
func LoadOrDefault(path, modeOverride, detected string) (*Policy, error) {
	var pol *Policy
	var err error
	if path == "" {
		pol, err = Default(detected)
	} else {
		pol, err = Load(path, detected)
	}
	if err != nil {
		return nil, err
	}
	if modeOverride != "" {
		pol.Mode = modeOverride
	}
	return pol, nil
}

// ParseEndpoints parses every endpoint (ParseEndpoint), naming the first
// that is not one.
func ParseEndpoints(list []string) ([]netip.AddrPort, error) {
	out := make([]netip.AddrPort, 0, len(list))
	for _, s := range list {
		ap, err := ParseEndpoint(s)
		if err != nil {
			return nil, err
		}
		out = append(out, ap)
	}
	return out, nil
}

// EndpointAddrs are the endpoints' addresses, without their ports.
func EndpointAddrs(list []string) ([]netip.Addr, error) {
	eps, err := ParseEndpoints(list)
	if err != nil {
		return nil, err
	}
	out := make([]netip.Addr, len(eps))
	for i, ap := range eps {
		out[i] = ap.Addr()
	}
	return out, nil
}

// Compiled is what the policy puts into the kernel (Tables, for the
// loader), with the rules it came from, to match them to cgroups.
type Compiled struct {
	kernelpolicy.Tables
	rules []Rule
	globs []compiledGlob // rules[i]'s cgroup glob, compiled once
}

// Compile turns a validated policy into map entries.
func (p *Policy) Compile() (*Compiled, error) {
	c := &Compiled{}
	c.Config.Mode = bpf.ModeEnforce
	c.Config.MaxConnsCgroup = uint32(p.MaxConnectionsPerCgroup)
	c.Config.MaxConnsUid = uint32(p.MaxConnectionsPerUser)
	c.Config.CredReadsPerMin = uint32(p.CredentialReadsPerMinute)
	if p.Mode == ModeAudit {
		c.Config.Mode = bpf.ModeAudit
	}
	if *p.BlockNonHostNetns {
		c.Config.Flags |= bpf.ConfigBlockNonHostNetns
	}
	if *p.RequireToken {
		c.Config.Flags |= bpf.ConfigRequireToken
	}
	if *p.RefuseForwarded {
		c.Config.Flags |= bpf.ConfigRefuseForwarded
	}
	if len(p.CredentialPaths) > len(c.Config.Prefixes) {
		return nil, fmt.Errorf("compiling credentialPaths: at most %d prefixes", len(c.Config.Prefixes))
	}
	for i, cp := range p.CredentialPaths {
		rest, err := CredentialPrefix(cp)
		if err != nil {
			return nil, fmt.Errorf("compiling credentialPaths[%d]: %w", i, err)
		}
		c.Config.Prefixes[i].Len = uint32(len(rest))
		putChars(c.Config.Prefixes[i].S[:], rest)
	}
	c.Config.PrefixCount = uint32(len(p.CredentialPaths))
	if err := p.compileProfile(&c.Config); err != nil {
		return nil, err
	}
	rules, err := compileRules(p.Rules)
	if err != nil {
		return nil, err
	}
	c.Rules, c.rules = rules, slices.Clone(p.Rules)
	c.globs = compileGlobs(c.rules)
	for _, s := range p.Endpoints {
		ap, err := ParseEndpoint(s)
		if err != nil {
			return nil, fmt.Errorf("compiling endpoints: %w", err)
		}
		c.Endpoints = append(c.Endpoints, kernelpolicy.EndpointKey(ap))
	}
	return c, nil
}

// YAML renders the effective policy, every key in schema order (see
// render.go). Parse reads it back to the same policy.
func (p *Policy) YAML() ([]byte, error) {
	return p.render()
}
