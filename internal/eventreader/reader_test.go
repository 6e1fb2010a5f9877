package eventreader

import (
	"os"
	"strings"
	"testing"

	"github.com/imdsguard/imdsguard/internal/cgroupfs"
)

func TestCgroupResolver(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: open_by_handle_at requires CAP_DAC_READ_SEARCH")
	}
	mount, err := cgroupfs.V2Mount()
	if err != nil {
		t.Skip(err)
	}
	r, err := NewCgroupResolver(mount)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	dir, err := os.MkdirTemp(mount, "imdsguard-events-test-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(dir)
	id, err := cgroupfs.ID(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := r.Path(id), dir[len(mount):]; got != want {
		t.Fatalf("Path(%d) = %q, want %q", id, got, want)
	}
	if got := r.Path(1<<62 + 3); got != "" {
		t.Fatalf("Path(unknown id) = %q, want empty", got)
	}
}

// A token passed as a header argument (curl -H) never reaches an event.
func TestCmdlineTokensAreRedacted(t *testing.T) {
	for _, tt := range []struct{ in, want []string }{
		{[]string{"curl", "-H", "X-aws-ec2-metadata-token: AQAEAsecret", "http://169.254.169.254/"},
			[]string{"curl", "-H", "X-aws-ec2-metadata-token: <redacted>", "http://169.254.169.254/"}},
		{[]string{"curl", "--header=x-aws-ec2-metadata-token:secret"},
			[]string{"curl", "--header=x-aws-ec2-metadata-token: <redacted>"}},
		// the TTL header carries no secret
		{[]string{"curl", "-H", "X-aws-ec2-metadata-token-ttl-seconds: 60"},
			[]string{"curl", "-H", "X-aws-ec2-metadata-token-ttl-seconds: 60"}},
	} {
		got := strings.Join(redactTokens(append([]string{}, tt.in...)), " ")
		if want := strings.Join(tt.want, " "); got != want {
			t.Errorf("redactTokens(%q) = %q, want %q", tt.in, got, want)
		}
	}
}
