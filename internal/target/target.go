// Package target knows the names of event formats and the shape of output
// targets, for every place that checks them (flags, the policy file, the
// output pipeline): one definition, no dependencies.
package target

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
)

// Event formats.
const (
	FormatJSON = "json"
	FormatOCSF = "ocsf"
)

// CheckFormat says whether f names an event format.
func CheckFormat(f string) error {
	if f != FormatJSON && f != FormatOCSF {
		return fmt.Errorf("%q is not a format (want %q or %q)", f, FormatJSON, FormatOCSF)
	}
	return nil
}

// Target is where events go: Kind stdout, file (Where: the path), or udp,
// tcp, tls (Where: HOST:PORT of a syslog collector).
type Target struct {
	Kind, Where string
}

// CheckAll parses every target, reporting each bad one.
func CheckAll(targets []string) error {
	var errs []error
	for _, t := range targets {
		if _, err := Parse(t); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Parse reads stdout, file:/PATH or syslog+{udp,tcp,tls}://HOST:PORT.
func Parse(t string) (Target, error) {
	switch {
	case t == "stdout":
		return Target{Kind: "stdout"}, nil
	case strings.HasPrefix(t, "file:"):
		p := strings.TrimPrefix(t, "file:")
		if !strings.HasPrefix(p, "/") {
			return Target{}, fmt.Errorf("output %q: the file path must be absolute", t)
		}
		return Target{Kind: "file", Where: p}, nil
	case strings.HasPrefix(t, "syslog+"):
		return parseSyslog(t)
	}
	return Target{}, fmt.Errorf("output %q: want stdout, file:/PATH or syslog+{udp,tcp,tls}://HOST:PORT", t)
}

func parseSyslog(t string) (Target, error) {
	u, err := url.Parse(t)
	if err != nil || u.Host == "" || u.Port() == "" || (u.Path != "" && u.Path != "/") {
		return Target{}, fmt.Errorf("output %q: want syslog+udp://HOST:PORT, syslog+tcp://HOST:PORT or syslog+tls://HOST:PORT", t)
	}
	n := strings.TrimPrefix(u.Scheme, "syslog+")
	if n != "udp" && n != "tcp" && n != "tls" {
		return Target{}, fmt.Errorf("output %q: transport %q is not udp, tcp or tls", t, n)
	}
	if _, err := strconv.ParseUint(u.Port(), 10, 16); err != nil {
		return Target{}, fmt.Errorf("output %q: bad port", t)
	}
	return Target{Kind: n, Where: u.Host}, nil
}
