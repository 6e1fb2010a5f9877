package target

import "testing"

// TestCheckSyslogUDPMaxBytes: RFC 5426's IPv4 floor up to the largest
// IPv4 UDP payload; the default is inside.
func TestCheckSyslogUDPMaxBytes(t *testing.T) {
	for n, ok := range map[int]bool{0: false, 479: false, 480: true, SyslogUDPMaxBytesDefault: true, 1472: true, 65507: true, 65508: false, -2048: false} {
		if err := CheckSyslogUDPMaxBytes(n); (err == nil) != ok {
			t.Errorf("%d: %v, want ok=%v", n, err, ok)
		}
	}
}
