package sinks

import (
	"strconv"
	"time"
	"unicode/utf8"
)

// RFC 5424 field limits (section 6).
const (
	maxHostname = 255
	maxAppName  = 48
	maxProcID   = 128
	maxMsgID    = 32
	maxSDName   = 32
)

// nilValue is RFC 5424's NILVALUE, for a field with nothing in it.
const nilValue = '-'

// formatter renders records as RFC 5424 messages. Its header fields are
// sanitised once, at construction.
type formatter struct {
	facility int
	hostname string
	appName  string
	procID   string
}

func newFormatter(facility int, hostname, appName string, pid int) formatter {
	return formatter{
		facility: facility,
		hostname: string(appendHeaderField(nil, hostname, maxHostname)),
		appName:  string(appendHeaderField(nil, appName, maxAppName)),
		procID:   strconv.Itoa(pid),
	}
}

// fit says what render did to make a message fit its limit.
type fit uint8

const (
	fitWhole     fit = iota // sent as it is
	fitWithoutSD            // the structured data dropped: the JSON MSG carries the same fields
	fitTruncated            // also cut at the limit
)

// render returns r as one RFC 5424 message of at most limit bytes (no limit
// when limit <= 0), without transport framing:
//
//	<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA MSG
//
// now stamps records without a time. A message over the limit loses its
// structured data first: the JSON MSG carries the same fields, so nothing
// is lost and the JSON stays whole. If it is still over, the structured
// data says so ([SDID truncated="true" msg_len="N"], N the octets of the
// whole MSG), so that a receiver can tell a cut record from a broken
// sender, and the message is cut at the limit on a UTF-8 boundary.
func (f *formatter) render(r *Record, now time.Time, limit int) ([]byte, fit) {
	msg, _ := f.appendMessage(nil, r, now, r.SDID, r.SD)
	if limit <= 0 || len(msg) <= limit {
		return msg, fitWhole
	}
	msg, at := f.appendMessage(msg[:0], r, now, "", nil)
	if len(msg) <= limit {
		return msg, fitWithoutSD
	}
	if r.SDID != "" {
		mark := [][2]string{{"truncated", "true"}, {"msg_len", strconv.Itoa(len(msg) - at)}}
		if marked, markedAt := f.appendMessage(nil, r, now, r.SDID, mark); markedAt < limit {
			msg = marked
		}
	}
	return cutUTF8(msg, limit), fitTruncated
}

// cutUTF8 returns b cut to at most n bytes without splitting a UTF-8
// sequence: a receiver that checks MSG or PARAM-VALUE for valid UTF-8 (RFC
// 5424 requires it where a BOM or SD says so) would reject a split one.
// MSG is plain ASCII today (cleanJSON with asciiOnly); this keeps the cut
// safe if that ever changes.
func cutUTF8(b []byte, n int) []byte {
	if len(b) <= n {
		return b
	}
	for n > 0 && !utf8.RuneStart(b[n]) {
		n--
	}
	return b[:n]
}

// appendMessage appends the message, with the SD-ELEMENT [id params...] or
// NILVALUE when id is empty, and returns it with the offset where MSG
// would start.
func (f *formatter) appendMessage(dst []byte, r *Record, now time.Time, id string, params [][2]string) ([]byte, int) {
	dst = append(dst, '<')
	dst = strconv.AppendInt(dst, int64(f.facility*8+clampSeverity(r.Severity)), 10)
	dst = append(dst, ">1 "...)
	t := r.Time
	if t.IsZero() {
		t = now
	}
	// Microseconds are the most RFC 5424 allows (TIME-SECFRAC, 6 digits);
	// UTC keeps timestamps from different hosts comparable as strings.
	dst = t.UTC().AppendFormat(dst, "2006-01-02T15:04:05.000000Z07:00")
	dst = append(dst, ' ')
	dst = append(dst, f.hostname...)
	dst = append(dst, ' ')
	dst = append(dst, f.appName...)
	dst = append(dst, ' ')
	dst = append(dst, f.procID...)
	dst = append(dst, ' ')
	dst = appendHeaderField(dst, r.MsgID, maxMsgID)
	dst = append(dst, ' ')
	if id != "" {
		dst = appendSD(dst, id, params)
	} else {
		dst = append(dst, nilValue)
	}
	if len(r.JSON) == 0 {
		return dst, len(dst)
	}
	dst = append(dst, ' ')
	at := len(dst)
	// No BOM: MSG is made plain ASCII instead, which is valid MSG-ANY and
	// needs no BOM, while a BOM in front of the JSON would make JSON
	// parsers downstream (rsyslog's mmjsonparse, SIEM ingest) reject it.
	return cleanJSON(dst, r.JSON, true), at
}

func clampSeverity(s int) int {
	return min(max(s, 0), 7)
}

// appendHeaderField appends s as a header field: PRINTUSASCII (33..126)
// only, at most limit bytes, NILVALUE when empty. Any other byte, space and
// newline included, becomes '_' so it cannot shift the fields after it.
func appendHeaderField(dst []byte, s string, limit int) []byte {
	if s == "" {
		return append(dst, nilValue)
	}
	for i := 0; i < len(s) && i < limit; i++ {
		c := s[i]
		if c < 33 || c > 126 {
			c = '_'
		}
		dst = append(dst, c)
	}
	return dst
}

// appendSD appends one SD-ELEMENT: [SD-ID SP PARAM-NAME="PARAM-VALUE" ...].
func appendSD(dst []byte, id string, params [][2]string) []byte {
	dst = append(dst, '[')
	dst = appendSDName(dst, id)
	for _, p := range params {
		dst = append(dst, ' ')
		dst = appendSDName(dst, p[0])
		dst = append(dst, '=', '"')
		dst = appendSDValue(dst, p[1])
		dst = append(dst, '"')
	}
	return append(dst, ']')
}

// appendSDName appends s as an SD-NAME: 1 to 32 PRINTUSASCII characters
// except '=', ']' and '"'. Names come from our own code, so sanitising
// (invalid bytes become '_') rather than failing keeps one bad name from
// losing the event; '@' stays, as SD-IDs of the form name@PEN need it.
func appendSDName(dst []byte, s string) []byte {
	if s == "" {
		return append(dst, '_')
	}
	for i := 0; i < len(s) && i < maxSDName; i++ {
		c := s[i]
		if c < 33 || c > 126 || c == '=' || c == ']' || c == '"' {
			c = '_'
		}
		dst = append(dst, c)
	}
	return dst
}

// appendSDValue appends s as a PARAM-VALUE. RFC 5424 section 6.3.3 requires
// '"', '\' and ']' to be backslash-escaped. Control characters are written
// as \n, \r, \t or \u00XX: a raw newline would end the message for receivers
// that split on newlines (RFC 6587 non-transparent framing, files). A
// receiver unescapes only the three RFC escapes, so it shows these as the
// literal text "\n"; the JSON MSG keeps the exact value. Invalid UTF-8
// becomes U+FFFD because PARAM-VALUE must be UTF-8, and characters that
// viewers act on (C1 controls, line separators, bidi overrides) are escaped.
func appendSDValue(dst []byte, s string) []byte {
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			i++
			switch {
			case c == '"' || c == '\\' || c == ']':
				dst = append(dst, '\\', c)
			case c == '\n':
				dst = append(dst, '\\', 'n')
			case c == '\r':
				dst = append(dst, '\\', 'r')
			case c == '\t':
				dst = append(dst, '\\', 't')
			case c < 0x20 || c == 0x7f:
				dst = appendUEscape(dst, rune(c))
			default:
				dst = append(dst, c)
			}
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			dst = utf8.AppendRune(dst, utf8.RuneError)
		case isDangerousRune(r):
			dst = appendUEscape(dst, r)
		default:
			dst = append(dst, s[i:i+size]...)
		}
		i += size
	}
	return dst
}

// appendOctetFrame appends msg with RFC 6587 octet-counting framing
// ("MSG-LEN SP SYSLOG-MSG"): the receiver reads exactly MSG-LEN bytes, so
// no byte inside a message can end it or start another.
func appendOctetFrame(dst, msg []byte) []byte {
	dst = strconv.AppendInt(dst, int64(len(msg)), 10)
	dst = append(dst, ' ')
	return append(dst, msg...)
}
