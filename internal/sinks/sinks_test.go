package sinks

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"
)

func TestWriterWritesJSONLines(t *testing.T) {
	var buf bytes.Buffer
	s := NewWriter(&buf)
	s.Send(Record{JSON: []byte(`{"a":1}`)})
	// A formatter bug letting a raw newline through must not forge a line.
	s.Send(Record{JSON: []byte("{\"b\":\"x\ny\"}")})
	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	want := "{\"a\":1}\n{\"b\":\"x\\u000ay\"}\n"
	if got := buf.String(); got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func TestWriterConcurrentLinesDoNotInterleave(t *testing.T) {
	var buf bytes.Buffer
	s := NewWriter(&buf)
	var wg sync.WaitGroup
	line := `{"k":"` + strings.Repeat("x", 4000) + `"}`
	for range 8 {
		wg.Go(func() {
			for range 50 {
				s.Send(Record{JSON: []byte(line)})
			}
		})
	}
	wg.Wait()
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines) != 400 {
		t.Fatalf("got %d lines, want 400", len(lines))
	}
	for i, l := range lines {
		if l != line {
			t.Fatalf("line %d is torn: %.40q...", i, l)
		}
	}
}

func TestCleanJSON(t *testing.T) {
	tests := []struct {
		name      string
		in        string
		asciiOnly bool
		want      string
	}{
		{"clean copy", `{"a":"b","n":1}`, false, `{"a":"b","n":1}`},
		{"utf8 kept for files", `{"a":"ünï ✓"}`, false, `{"a":"ünï ✓"}`},
		{"utf8 escaped for syslog", `{"a":"ü✓😀"}`, true, `{"a":"\u00fc\u2713\ud83d\ude00"}`},
		{"newline in string", "{\"a\":\"x\ny\r\"}", false, `{"a":"x\u000ay\u000d"}`},
		{"newline between tokens", "{\"a\":1,\n\"b\":2}\n", false, `{"a":1, "b":2} `},
		{"escaped quote keeps string state", "{\"a\":\"q\\\"\n\",\"b\":\"\t\"}", false, `{"a":"q\"\u000a","b":"\u0009"}`},
		{"invalid utf8", "{\"a\":\"\xff\xfe\"}", false, `{"a":"\ufffd\ufffd"}`},
		{"line separator and bidi override", "{\"a\":\"x\u2028y\u202ez\u0085\"}", false, `{"a":"x\u2028y\u202ez\u0085"}`},
		{"del", "{\"a\":\"\x7f\"}", false, `{"a":"\u007f"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := string(cleanJSON(nil, []byte(tt.in), tt.asciiOnly))
			if got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

// TestCleanJSONKeepsValue checks that escaping changes bytes, not meaning:
// the cleaned text decodes to the same value as the valid input.
// The eight-bytes-at-a-time check agrees with a byte-by-byte one on every
// byte value in every position.
func TestPrintableASCII8(t *testing.T) {
	base := []byte("{\"ab\":1}")
	for pos := range 8 {
		for c := range 256 {
			b := append([]byte{}, base...)
			b[pos] = byte(c)
			want := true
			for _, x := range b {
				want = want && x >= 0x20 && x < 0x7f
			}
			if got := printableASCII8(binary.LittleEndian.Uint64(b)); got != want {
				t.Fatalf("printableASCII8(%q) = %v, want %v", b, got, want)
			}
		}
	}
	for _, w := range []uint64{0, 0x1f1f1f1f1f1f1f1f, 0x7f7f7f7f7f7f7f7f, 0x2020202020202020, 0x7e7e7e7e7e7e7e7e, 0x20207e1f7e202020} {
		want := true
		for i := range 8 {
			x := byte(w >> (8 * i))
			want = want && x >= 0x20 && x < 0x7f
		}
		if got := printableASCII8(w); got != want {
			t.Errorf("printableASCII8(%#x) = %v, want %v", w, got, want)
		}
	}
}

func TestCleanJSONKeepsValue(t *testing.T) {
	in := []byte(`{"path":"/latest/meta-data/iam/security-credentials/rôle-✓-😀","comm":"cu\"rl\\]","n":[1,2.5,true,null]}`)
	out := cleanJSON(nil, in, true)
	for _, c := range out {
		if c < 0x20 || c >= 0x7f {
			t.Fatalf("non-ASCII or control byte %#x in %q", c, out)
		}
	}
	var a, b any
	if err := json.Unmarshal(in, &a); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(out, &b); err != nil {
		t.Fatalf("cleaned JSON does not parse: %v: %s", err, out)
	}
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("value changed: %v != %v", a, b)
	}
}

func TestFileAppendsAndReopens(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "events.json")
	f, err := NewFile(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	// The umask may only tighten 0640.
	if perm := st.Mode().Perm(); perm&^0o640 != 0 {
		t.Fatalf("mode %v, want at most 0640", perm)
	}

	f.Send(Record{JSON: []byte(`{"seq":1}`)})
	// What logrotate does: rename, then signal the daemon to reopen.
	rotated := path + ".1"
	if err := os.Rename(path, rotated); err != nil {
		t.Fatal(err)
	}
	if err := f.Reopen(); err != nil {
		t.Fatalf("reopen: %v", err)
	}
	f.Send(Record{JSON: []byte(`{"seq":2}`)})
	if err := f.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	// After Close: dropped, not a panic or a write to a closed file.
	f.Send(Record{JSON: []byte(`{"seq":3}`)})
	if err := f.Reopen(); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("reopen after close: %v, want os.ErrClosed", err)
	}

	if got := readFile(t, rotated); got != "{\"seq\":1}\n" {
		t.Fatalf("rotated file: %q", got)
	}
	if got := readFile(t, path); got != "{\"seq\":2}\n" {
		t.Fatalf("new file: %q", got)
	}
}

func TestFileAppendsToExistingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.json")
	if err := os.WriteFile(path, []byte("{\"old\":true}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := NewFile(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	f.Send(Record{JSON: []byte("{\"a\":\"evil\n{\\\"forged\\\":1}\"}")})
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	got := readFile(t, path)
	want := "{\"old\":true}\n{\"a\":\"evil\\u000a{\\\"forged\\\":1}\"}\n"
	if got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	for line := range strings.Lines(got) {
		if !json.Valid([]byte(line)) || !utf8.ValidString(line) {
			t.Fatalf("invalid line %q", line)
		}
	}
}

func TestNewFileError(t *testing.T) {
	_, err := NewFile(filepath.Join(t.TempDir(), "missing", "events.json"), nil)
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("got %v, want wrapped os.ErrNotExist", err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
