package events

import (
	"strings"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// EncodeJSON renders an event (any of this package's event types) as one
// JSON object without a line ending: "time" first (t, in UTC), then the
// event's fields in their fixed order. zap's encoder escapes control
// characters and invalid UTF-8, so a workload-chosen comm or path cannot
// forge a line.
func EncodeJSON(t time.Time, ev zapcore.ObjectMarshaler) []byte {
	enc := zapcore.NewJSONEncoder(zapcore.EncoderConfig{TimeKey: "time", EncodeTime: zapcore.RFC3339NanoTimeEncoder})
	buf, err := enc.EncodeEntry(zapcore.Entry{Time: t.UTC(), Level: zap.InfoLevel}, []zap.Field{zap.Inline(ev)})
	if err != nil {
		return nil
	}
	defer buf.Free()
	return []byte(strings.TrimRight(buf.String(), "\n"))
}
