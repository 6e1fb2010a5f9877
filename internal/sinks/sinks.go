// Package sinks delivers already-rendered event records to where a security
// team looks: stdout, an append-only file and a remote syslog collector.
//
// Every sink treats the record's contents as hostile: values come from the
// workload (comm, path, cgroup), so no byte in them may forge a line, a
// syslog frame or a structured-data element.
package sinks

import (
	"encoding/binary"
	"io"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"
)

// Record is one event, already rendered by a formatter.
type Record struct {
	Time time.Time
	// JSON is the event as one JSON object without a trailing newline: what
	// files and stdout get, and the syslog MSG.
	JSON []byte
	// SDID is the syslog structured-data id, e.g. "imdsguard@32473".
	SDID string
	// SD holds the structured-data params (name, value). Values come from
	// the workload; the syslog sink escapes them.
	SD [][2]string
	// Severity is the syslog severity 0..7 (4 warning for deny, 6 info for
	// allow).
	Severity int
	// MsgID is the syslog MSGID, e.g. "request", "connect".
	MsgID string
}

// Sink delivers records.
type Sink interface {
	// Send delivers or queues one record. It never waits on a remote peer.
	// The sink copies what it keeps, so the caller may reuse r.JSON.
	Send(Record)
	// Close flushes what it can within a bounded wait and stops the sink's
	// goroutines.
	Close() error
}

// Writer writes one JSON object per line to an io.Writer, typically stdout.
type Writer struct {
	mu  sync.Mutex
	w   io.Writer
	buf []byte
}

// NewWriter returns a sink writing JSON lines to w. Writes are synchronous:
// stdout is local, and a reader too slow for it is the operator's choice.
func NewWriter(w io.Writer) Sink {
	return &Writer{w: w}
}

// Send writes r.JSON and a newline in one Write call, so lines from
// concurrent senders never interleave.
func (s *Writer) Send(r Record) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf = appendJSONLine(s.buf[:0], r.JSON, false)
	// A failing stdout has nowhere to be reported to.
	_, _ = s.w.Write(s.buf)
}

// Close does not close the underlying writer: stdout belongs to the process.
func (s *Writer) Close() error { return nil }

// appendJSONLine appends js and a newline to dst, with js made safe for a
// line-oriented sink by cleanJSON.
func appendJSONLine(dst, js []byte, asciiOnly bool) []byte {
	dst = cleanJSON(dst, js, asciiOnly)
	return append(dst, '\n')
}

// cleanJSON appends js to dst so that it cannot end a line or a message
// early. A formatter that escapes properly (zap does) produces no raw control
// bytes, so this is a copy in the normal case; it is a second line of defence
// against a formatter bug letting a workload-chosen newline forge a record.
//
// Inside JSON strings a raw control character is invalid anyway, so it is
// replaced by its \u00XX escape, which decodes to the same character. Outside
// strings the only legal control bytes are whitespace, so any control byte
// becomes a space, which parses the same. With asciiOnly every non-ASCII
// character inside a string becomes a \uXXXX escape (a surrogate pair beyond
// the BMP) and invalid UTF-8 becomes \ufffd: the text stays the same JSON
// value while the bytes become plain ASCII.
func cleanJSON(dst, js []byte, asciiOnly bool) []byte {
	if jsonIsClean(js, asciiOnly) {
		return append(dst, js...)
	}
	inString, escaped := false, false
	for i := 0; i < len(js); {
		c := js[i]
		if c < utf8.RuneSelf {
			i++
			switch {
			case c < 0x20 || c == 0x7f:
				if inString {
					dst = appendUEscape(dst, rune(c))
				} else {
					dst = append(dst, ' ')
				}
				// An escape cannot consume a control byte we replaced.
				escaped = false
				continue
			case escaped:
				escaped = false
			case inString && c == '\\':
				escaped = true
			case c == '"':
				inString = !inString
			}
			dst = append(dst, c)
			continue
		}
		r, size := utf8.DecodeRune(js[i:])
		i += size
		escaped = false
		switch {
		case r == utf8.RuneError && size == 1:
			dst = appendUEscape(dst, utf8.RuneError)
		case asciiOnly || isDangerousRune(r):
			dst = appendUEscape(dst, r)
		default:
			dst = append(dst, js[i-size:i]...)
		}
	}
	return dst
}

// jsonIsClean reports whether cleanJSON would copy js unchanged. Every
// record passes through it, and is printable ASCII but for the odd name or
// path, so it checks eight bytes at a time until one is not.
func jsonIsClean(js []byte, asciiOnly bool) bool {
	i := 0
	for ; i+8 <= len(js) && printableASCII8(binary.LittleEndian.Uint64(js[i:])); i += 8 {
	}
	for i < len(js) {
		c := js[i]
		if c < utf8.RuneSelf {
			if c < 0x20 || c == 0x7f {
				return false
			}
			i++
			continue
		}
		if asciiOnly {
			return false
		}
		r, size := utf8.DecodeRune(js[i:])
		if (r == utf8.RuneError && size == 1) || isDangerousRune(r) {
			return false
		}
		i += size
	}
	return true
}

// printableASCII8 reports whether each byte of w is printable ASCII,
// 0x20 to 0x7e: none has bit 7 set; none borrows from bit 7 when 0x20 is
// taken off (a borrow passed on to the next byte only comes from a byte
// below 0x20, which fails anyway); none reaches bit 7 when 1 is added
// (only 0x7f does).
func printableASCII8(w uint64) bool {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	return w&highs == 0 && (w-0x20*ones)&highs == 0 && (w+ones)&highs == 0
}

// isDangerousRune reports non-ASCII characters that terminals, log viewers
// or line splitters may act on: C1 controls (U+0085 is a newline in
// Unicode), the line and paragraph separators, and format characters such as
// the bidirectional overrides that can make a SIEM display reorder text.
func isDangerousRune(r rune) bool {
	return unicode.IsControl(r) || r == '\u2028' || r == '\u2029' || unicode.Is(unicode.Cf, r)
}

// appendUEscape appends r as a JSON \uXXXX escape, as a surrogate pair when
// r is beyond the Basic Multilingual Plane.
func appendUEscape(dst []byte, r rune) []byte {
	if r > 0xffff {
		r -= 0x10000
		dst = appendU16(dst, 0xd800+(r>>10))
		return appendU16(dst, 0xdc00+(r&0x3ff))
	}
	return appendU16(dst, r)
}

func appendU16(dst []byte, r rune) []byte {
	const hex = "0123456789abcdef"
	return append(dst, '\\', 'u', hex[r>>12&0xf], hex[r>>8&0xf], hex[r>>4&0xf], hex[r&0xf])
}

// The sinks the daemon holds as a Sink.
var (
	_ Sink = (*Writer)(nil)
	_ Sink = (*File)(nil)
	_ Sink = (*Syslog)(nil)
)
