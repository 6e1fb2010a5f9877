package policy

import (
	"fmt"
	"strings"

	"github.com/imdsguard/imdsguard/bpf"
	"github.com/imdsguard/imdsguard/internal/cloud"
)

// resolveProfile sets p.Profile from p.Cloud, auto being detected (the
// cloud Detect named at start). An unknown name leaves the zero profile:
// validate reports it.
func (p *Policy) resolveProfile(detected string) {
	if p.Cloud == "" {
		p.Cloud = cloud.Auto
	}
	name := p.Cloud
	if name == cloud.Auto {
		name = detected
	}
	prof, _ := cloud.Lookup(name)
	p.Profile = prof
}

// validateCloud checks the cloud key and what depends on the profile.
func (d *decoder) validateCloud(p *Policy, requireTokenSet bool) {
	if !cloud.Known(p.Cloud) {
		d.add(d.line("cloud"), "cloud", "%q is not a cloud (want one of %s)", p.Cloud, strings.Join(cloud.Names(), ", "))
		return
	}
	if p.Profile.Name == "" {
		d.add(d.line("cloud"), "cloud", "auto detected %q, which has no profile", p.Cloud)
		return
	}
	if requireTokenSet && *p.RequireToken && !p.Profile.HasProof() {
		d.add(d.line("requireToken"), "requireToken", "cloud %s (%s) asks clients for no token or header, so there is none to require: name the cloud (cloud: aws, ...) or drop requireToken",
			p.Profile.Name, p.cloudOrigin())
	}
	if p.MaxTokenTTL != 0 && !d.failed["maxTokenTTL"] {
		pr := p.Profile.Proof
		if pr == nil || pr.TokenPath == "" {
			d.add(d.line("maxTokenTTL"), "maxTokenTTL", "cloud %s (%s) has no tokens to cap", p.Profile.Name, p.cloudOrigin())
		} else if p.MaxTokenTTL > pr.MaxTTL {
			d.add(d.line("maxTokenTTL"), "maxTokenTTL", "%d is more than the %d seconds %s's tokens may live", p.MaxTokenTTL, pr.MaxTTL, p.Profile.Name)
		}
	}
}

// cloudOrigin says whether the profile was named or detected.
func (p *Policy) cloudOrigin() string {
	if p.Cloud == cloud.Auto {
		return "detected by cloud: auto"
	}
	return "named by cloud"
}

// compileProfile writes the profile's proof, token flow and legacy paths
// into the kernel's config.
func (p *Policy) compileProfile(c *bpf.ImdsguardConfig) error {
	prof := &c.Prof
	if pr := p.Profile.Proof; pr != nil {
		if err := putName(prof.Proof[:], &prof.ProofLen, pr.Header, bpf.HdrNameMax); err != nil {
			return fmt.Errorf("compiling cloud %s's proof header: %w", p.Profile.Name, err)
		}
		if err := putName(prof.Ttl[:], &prof.TtlLen, pr.TTLHeader, bpf.HdrNameMax); err != nil {
			return fmt.Errorf("compiling cloud %s's TTL header: %w", p.Profile.Name, err)
		}
		if err := putName(prof.TokenPath[:], &prof.TokenPathLen, pr.TokenPath, bpf.TokenPathMax); err != nil {
			return fmt.Errorf("compiling cloud %s's token path: %w", p.Profile.Name, err)
		}
		prof.MaxTtl = uint32(pr.MaxTTL)
		if p.MaxTokenTTL != 0 {
			prof.MaxTtl = uint32(p.MaxTokenTTL)
		}
	}
	if len(p.Profile.LegacyPaths) > len(c.Legacy) {
		return fmt.Errorf("compiling cloud %s: at most %d legacy paths", p.Profile.Name, len(c.Legacy))
	}
	for i, l := range p.Profile.LegacyPaths {
		l = strings.ToLower(strings.TrimSuffix(l, "/"))
		if len(l) > bpf.PrefixMax {
			return fmt.Errorf("compiling cloud %s: legacy path %q is longer than %d bytes", p.Profile.Name, l, bpf.PrefixMax)
		}
		c.Legacy[i].Len = uint32(len(l))
		putChars(c.Legacy[i].S[:], l)
	}
	c.LegacyCount = uint32(len(p.Profile.LegacyPaths))
	return nil
}

// putName stores s (at most max bytes) and its length.
func putName(dst []int8, n *uint8, s string, max int) error {
	if len(s) > max || len(s) >= len(dst) {
		return fmt.Errorf("%q is longer than %d bytes", s, max)
	}
	*n = uint8(len(s))
	putChars(dst, s)
	return nil
}

func putChars(dst []int8, s string) {
	for i := range len(s) {
		dst[i] = int8(s[i])
	}
}
