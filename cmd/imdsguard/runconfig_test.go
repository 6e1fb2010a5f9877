package main

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSyslogUDPMaxBytes: the flag defaults to RFC 5426's 2048 octets,
// refuses a size outside 480..65507 as a usage error naming it, takes the
// policy's output.syslogUDPMaxBytes when not given, and overrides it when
// given.
func TestSyslogUDPMaxBytes(t *testing.T) {
	c, err := parseRunFlags(nil, io.Discard)
	if err != nil || c.syslogUDPMax != 2048 {
		t.Fatalf("default: %v, %d; want 2048", err, c.syslogUDPMax)
	}
	_, err = parseRunFlags([]string{"--syslog-udp-max-bytes=100"}, io.Discard)
	var ue usageError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "--syslog-udp-max-bytes: 100 octets: want 480 to 65507") {
		t.Fatalf("too small: %v, want a usage error naming the flag and the range", err)
	}

	dir := t.TempDir()
	pol := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(pol, []byte("output:\n  targets: [syslog+udp://127.0.0.1:514]\n  syslogUDPMaxBytes: 1472\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		args []string
		want int
	}{
		{[]string{"--policy", pol}, 1472},
		{[]string{"--policy", pol, "--syslog-udp-max-bytes", "8192"}, 8192},
	} {
		// An empty DMI directory: no cloud detected, the generic profile.
		c, err := parseRunFlags(append(tt.args, "--dmi-dir", dir), io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.loadPolicy(); err != nil {
			t.Fatal(err)
		}
		if c.syslogUDPMax != tt.want {
			t.Errorf("%v: %d, want %d", tt.args, c.syslogUDPMax, tt.want)
		}
	}
}
