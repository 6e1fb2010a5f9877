package events

import (
	"io"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// JSONSink writes one JSON object per line. zap's encoder escapes control
// characters and invalid UTF-8, so a workload-chosen comm or path cannot
// forge a line.
type JSONSink struct {
	core zapcore.Core
}

// NewJSONSink writes events to w.
func NewJSONSink(w io.Writer) *JSONSink {
	enc := zapcore.NewJSONEncoder(zapcore.EncoderConfig{
		TimeKey:        "time",
		EncodeTime:     zapcore.RFC3339NanoTimeEncoder,
		LineEnding:     zapcore.DefaultLineEnding,
		EncodeDuration: zapcore.StringDurationEncoder,
	})
	return &JSONSink{core: zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(w)), zap.InfoLevel)}
}

// Emit writes one event, stamped with the time the kernel saw it.
func (s *JSONSink) Emit(ev *Event) {
	_ = s.core.Write(zapcore.Entry{Time: ev.Time.UTC(), Level: zap.InfoLevel}, []zap.Field{zap.Inline(ev)})
}

// EmitPolicy writes a policy reload event.
func (s *JSONSink) EmitPolicy(ev *PolicyEvent) {
	_ = s.core.Write(zapcore.Entry{Time: ev.Time.UTC(), Level: zap.InfoLevel}, []zap.Field{zap.Inline(ev)})
}

// EmitTable writes an nftables table event.
func (s *JSONSink) EmitTable(ev *TableEvent) {
	_ = s.core.Write(zapcore.Entry{Time: ev.Time.UTC(), Level: zap.InfoLevel}, []zap.Field{zap.Inline(ev)})
}

// EmitPacket writes a packet event.
func (s *JSONSink) EmitPacket(ev *PacketEvent) {
	_ = s.core.Write(zapcore.Entry{Time: ev.Time.UTC(), Level: zap.InfoLevel}, []zap.Field{zap.Inline(ev)})
}
