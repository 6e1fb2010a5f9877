package nflog

import (
	"errors"
	"net"
	"net/netip"

	"go.uber.org/zap"

	"github.com/imdsguard/imdsguard/bpf"
	"github.com/imdsguard/imdsguard/internal/events"
)

// PacketSink receives packets the table stopped.
type PacketSink interface {
	EmitPacket(*events.PacketEvent)
}

// Report turns the messages logged with prefix into events until the
// reader is closed; audit says whether the policy in force only audits.
// The table rate-limits what it logs; its counters stay exact. A receive
// overrun is logged, never silent.
func Report(r *Reader, prefix string, audit func() bool, sink PacketSink, log *zap.Logger) {
	var lost uint64
	for {
		p, err := r.Read()
		if errors.Is(err, ErrOverrun) {
			lost++
			log.Warn("nftables log messages lost (the table's counters stay exact)", zap.Uint64("overruns", lost))
			continue
		}
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				log.Warn("reading the nftables log", zap.Error(err))
			}
			return
		}
		if p.Prefix != prefix {
			continue
		}
		action := bpf.ActionDeny
		if audit() {
			action = bpf.ActionAudit
		}
		sink.EmitPacket(&events.PacketEvent{
			Time:        p.Time,
			Action:      action,
			Endpoint:    netip.AddrPortFrom(p.Dst, p.DstPort),
			Src:         netip.AddrPortFrom(p.Src, p.SrcPort),
			InInterface: p.InIfName,
		})
	}
}
