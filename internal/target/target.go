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

// Size limits of a syslog message sent over UDP (syslog+udp), in octets.
// TCP and TLS carry messages of any size (octet counting), so they have
// none.
const (
	// SyslogUDPMaxBytesDefault is what RFC 5426 section 3.2 says every
	// receiver should accept. On a 1500-octet MTU a message over 1472
	// octets (IPv4; 1452 over IPv6) travels as IP fragments, and a lost
	// fragment loses it whole: where fragments are dropped, set the limit
	// to that.
	SyslogUDPMaxBytesDefault = 2048
	// SyslogUDPMaxBytesMin is what RFC 5426 says an IPv4 receiver must
	// accept: below it no receiver is bound to take the message at all.
	SyslogUDPMaxBytesMin = 480
	// SyslogUDPMaxBytesMax is the largest UDP payload over IPv4 (65535
	// minus the IP and UDP headers): the kernel refuses larger datagrams.
	SyslogUDPMaxBytesMax = 65507
)

// CheckSyslogUDPMaxBytes says whether n is a size limit for syslog over
// UDP.
func CheckSyslogUDPMaxBytes(n int) error {
	if n < SyslogUDPMaxBytesMin || n > SyslogUDPMaxBytesMax {
		return fmt.Errorf("%d octets: want %d to %d (RFC 5426: receivers should accept %d)",
			n, SyslogUDPMaxBytesMin, SyslogUDPMaxBytesMax, SyslogUDPMaxBytesDefault)
	}
	return nil
}
