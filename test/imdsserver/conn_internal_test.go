package imdsserver

import (
	"bytes"
	"io"
	"net"
	"testing"
)

// The per-connection record stops growing at MaxConnRecord, while Total and
// ReceivedBytes keep counting. net.Pipe stands in for a TCP connection because
// net/http would stop reading an oversized request long before the cap.
func TestConnRecordCap(t *testing.T) {
	s := New(Options{})
	client, server := net.Pipe()
	conn := s.track(server)
	defer conn.Close()

	payload := bytes.Repeat([]byte("0123456789abcdef"), MaxConnRecord/16+1)
	go func() {
		defer client.Close()
		if _, err := client.Write(payload); err != nil {
			t.Errorf("write: %v", err)
		}
	}()
	if _, err := io.Copy(io.Discard, conn); err != nil {
		t.Fatalf("read: %v", err)
	}

	got := s.Conns()
	if len(got) != 1 {
		t.Fatalf("got %d records, want 1", len(got))
	}
	if !bytes.Equal(got[0].Received, payload[:MaxConnRecord]) {
		t.Errorf("recorded %d bytes, want the first %d of the payload", len(got[0].Received), MaxConnRecord)
	}
	if got[0].Total != len(payload) || s.ReceivedBytes() != len(payload) {
		t.Errorf("Total = %d, ReceivedBytes = %d, want %d", got[0].Total, s.ReceivedBytes(), len(payload))
	}
}
