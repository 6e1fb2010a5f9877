// Package escape reads the escaped strings the test clients take on their
// command lines (-write, -comm, -payload), so a test can pass CR, LF and
// arbitrary bytes through argv.
package escape

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Unescape interprets Go string-literal escapes (\r, \n, \t, \\, \", \xNN,
// \u..., octal) in s, as strconv.Unquote(`"`+s+`"`) would, except that an
// unescaped double quote is taken literally and \' is accepted too.
func Unescape(s string) (string, error) {
	var b strings.Builder
	for len(s) > 0 {
		switch {
		case s[0] == '"':
			b.WriteByte('"')
			s = s[1:]
		case strings.HasPrefix(s, `\'`):
			b.WriteByte('\'')
			s = s[2:]
		default:
			r, multibyte, tail, err := strconv.UnquoteChar(s, '"')
			if err != nil {
				return "", fmt.Errorf("bad escape at %q", s)
			}
			if r < utf8.RuneSelf || !multibyte {
				b.WriteByte(byte(r))
			} else {
				b.WriteRune(r)
			}
			s = tail
		}
	}
	return b.String(), nil
}
