package events

import (
	"fmt"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// JSONEncoder renders events (any of this package's event types) as JSON
// objects without a line ending: "time" first (in UTC), then the event's
// fields in their fixed order. zap's encoder escapes control characters and
// invalid UTF-8, so a workload-chosen comm or path cannot forge a line.
//
// Make one and keep it: building zap's encoder cost more than encoding an
// event. It is safe for concurrent use (zap clones it for every entry and
// never writes to it).
type JSONEncoder struct {
	enc zapcore.Encoder
}

// NewJSONEncoder returns an encoder for Append.
func NewJSONEncoder() *JSONEncoder {
	return &JSONEncoder{enc: zapcore.NewJSONEncoder(zapcore.EncoderConfig{
		TimeKey: "time", EncodeTime: zapcore.RFC3339NanoTimeEncoder, SkipLineEnding: true,
	})}
}

// Append appends ev, rendered at time t, to dst.
func (e *JSONEncoder) Append(dst []byte, t time.Time, ev zapcore.ObjectMarshaler) ([]byte, error) {
	buf, err := e.enc.EncodeEntry(zapcore.Entry{Time: t.UTC(), Level: zap.InfoLevel}, []zap.Field{zap.Inline(ev)})
	if err != nil {
		return dst, fmt.Errorf("encoding event as JSON: %w", err)
	}
	defer buf.Free()
	return append(dst, buf.Bytes()...), nil
}

// EncodeJSON renders an event as JSONEncoder.Append does, nil when it cannot.
// It builds an encoder on every call: for what is rendered rarely.
func EncodeJSON(t time.Time, ev zapcore.ObjectMarshaler) []byte {
	b, err := NewJSONEncoder().Append(nil, t, ev)
	if err != nil {
		return nil
	}
	return b
}
