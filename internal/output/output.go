// Package output renders events (JSON lines or OCSF) and fans them out to
// the configured sinks: stdout, a file, syslog collectors. Rendering never
// blocks the event reader: network sinks queue in a bounded buffer.
package output

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/imdsguard/imdsguard/bpf"
	"github.com/imdsguard/imdsguard/internal/events"
	"github.com/imdsguard/imdsguard/internal/ocsf"
	"github.com/imdsguard/imdsguard/internal/sinks"
	"github.com/imdsguard/imdsguard/internal/target"
)

// Config says where events go.
type Config struct {
	Format   string   // json (default) or ocsf
	Targets  []string // "stdout", "file:PATH", "syslog+udp://HOST:PORT", "syslog+tcp://…", "syslog+tls://…"
	SyslogCA string   // CA bundle for syslog+tls (default: the system's)
	Product  ocsf.Product
	Hostname string
	Queue    int // per network sink
}

// Pipeline renders and delivers events; it implements the events sinks.
type Pipeline struct {
	cfg     Config
	sinks   []sinks.Sink
	files   []*sinks.File
	syslogs []*sinks.Syslog
	log     *zap.Logger
	json    *events.JSONEncoder
	// bufs holds *[]byte render buffers: the sinks copy what they keep,
	// so one buffer serves event after event. A pool, not one buffer,
	// because the reader, the folder's flush and the nftables log emit
	// from their own goroutines.
	bufs sync.Pool
}

// New opens every target. stdout is where "stdout" writes.
func New(cfg Config, stdout io.Writer, log *zap.Logger) (*Pipeline, error) {
	if cfg.Format == "" {
		cfg.Format = target.FormatJSON
	}
	if err := target.CheckFormat(cfg.Format); err != nil {
		return nil, fmt.Errorf("--format: %w", err)
	}
	if len(cfg.Targets) == 0 {
		cfg.Targets = []string{"stdout"}
	}
	p := &Pipeline{cfg: cfg, log: log, json: events.NewJSONEncoder()}
	p.bufs.New = func() any { return new([]byte) }
	for _, t := range cfg.Targets {
		tg, err := target.Parse(t)
		kind, where := tg.Kind, tg.Where
		if err != nil {
			p.Close()
			return nil, err
		}
		switch kind {
		case "stdout":
			p.sinks = append(p.sinks, sinks.NewWriter(stdout))
		case "file":
			f, err := sinks.NewFile(where, log)
			if err != nil {
				p.Close()
				return nil, fmt.Errorf("output %q: %w", t, err)
			}
			p.files = append(p.files, f)
			p.sinks = append(p.sinks, f)
		default:
			opts := sinks.SyslogOptions{Network: kind, Addr: where, Hostname: cfg.Hostname, AppName: "imdsguard", QueueLen: cfg.Queue}
			if kind == "tls" {
				tc, err := tlsConfig(where, cfg.SyslogCA)
				if err != nil {
					p.Close()
					return nil, fmt.Errorf("output %q: %w", t, err)
				}
				opts.TLS = tc
			}
			s, err := sinks.NewSyslog(opts, log)
			if err != nil {
				p.Close()
				return nil, fmt.Errorf("output %q: %w", t, err)
			}
			p.syslogs = append(p.syslogs, s)
			p.sinks = append(p.sinks, s)
		}
	}
	return p, nil
}

func tlsConfig(hostport, caFile string) (*tls.Config, error) {
	host := hostport
	if h, _, ok := strings.Cut(hostport, ":"); ok && !strings.HasPrefix(hostport, "[") {
		host = h
	}
	tc := &tls.Config{ServerName: strings.Trim(host, "[]"), MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("reading --syslog-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--syslog-ca %s: no PEM certificate in it", caFile)
		}
		tc.RootCAs = pool
	}
	return tc, nil
}

func severity(a bpf.Action) int {
	switch a {
	case bpf.ActionDeny:
		return 4 // warning
	case bpf.ActionAudit:
		return 5 // notice
	}
	return 6 // informational
}

func (p *Pipeline) send(r sinks.Record) {
	for _, s := range p.sinks {
		s.Send(r)
	}
}

// render appends the event in the configured format to dst: OCSF through
// toOCSF, else imdsguard's own JSON. nil when it cannot be rendered (logged).
func (p *Pipeline) render(dst []byte, t time.Time, ev zapcore.ObjectMarshaler, toOCSF func(ocsf.Product) ([]byte, error)) []byte {
	var b []byte
	var err error
	if p.cfg.Format != target.FormatOCSF {
		b, err = p.json.Append(dst, t, ev)
	} else {
		b, err = toOCSF(p.cfg.Product)
	}
	if err != nil {
		p.log.Warn("rendering "+p.cfg.Format, zap.Error(err))
		return nil
	}
	return b
}

// plainJSON is imdsguard's own JSON whatever the format, for the events
// OCSF has no class for; nil when it cannot be rendered (logged).
func (p *Pipeline) plainJSON(t time.Time, ev zapcore.ObjectMarshaler) []byte {
	b, err := p.json.Append(nil, t, ev)
	if err != nil {
		p.log.Warn("rendering JSON", zap.Error(err))
		return nil
	}
	return b
}

// Emit delivers a connect or request event.
func (p *Pipeline) Emit(ev *events.Event) {
	buf := p.bufs.Get().(*[]byte)
	defer p.bufs.Put(buf)
	js := p.render((*buf)[:0], ev.Time, ev, func(pr ocsf.Product) ([]byte, error) { return ocsf.Render(ev, pr) })
	if js == nil {
		return
	}
	*buf = js
	p.send(sinks.Record{
		Time: ev.Time, JSON: js, MsgID: ev.Kind.String(), Severity: severity(ev.Action),
		SDID: "imdsguard@32473", SD: p.eventSD(ev),
	})
}

// eventSD is the syslog structured data of an event, nil without syslog
// sinks: no other sink reads it, and it is most of what rendering for them
// allocates.
func (p *Pipeline) eventSD(ev *events.Event) [][2]string {
	if len(p.syslogs) == 0 {
		return nil
	}
	return [][2]string{
		{"action", ev.Action.String()}, {"reason", ev.Reason.String()}, {"endpoint", ev.Endpoint.String()},
		{"pid", strconv.FormatUint(uint64(ev.PID), 10)}, {"comm", ev.Comm}, {"uid", strconv.FormatUint(uint64(ev.UID), 10)},
		{"cgroup", ev.Cgroup}, {"container_id", ev.ContainerID}, {"pod_uid", ev.PodUID},
		{"method", ev.Method}, {"path", ev.Path}, {"credential_access", strconv.FormatBool(ev.CredentialAccess)},
		{"rule", ev.Rule},
	}
}

// EmitPacket delivers an nftables drop.
func (p *Pipeline) EmitPacket(ev *events.PacketEvent) {
	js := p.render(nil, ev.Time, ev, func(pr ocsf.Product) ([]byte, error) { return ocsf.Packet(ev, pr) })
	if js == nil {
		return
	}
	p.send(sinks.Record{Time: ev.Time, JSON: js, MsgID: "packet", Severity: severity(ev.Action), SDID: "imdsguard@32473",
		SD: [][2]string{{"action", ev.Action.String()}, {"reason", "routed_from_other_netns"}, {"endpoint", ev.Endpoint.String()},
			{"src", ev.Src.String()}, {"in_interface", ev.InInterface}}})
}

// EmitPolicy delivers a policy reload result (always JSON: OCSF has no
// class for it).
func (p *Pipeline) EmitPolicy(ev *events.PolicyEvent) {
	sev := 6
	if ev.Result != "loaded" {
		sev = 3
	}
	p.send(sinks.Record{Time: ev.Time, JSON: p.plainJSON(ev.Time, ev), MsgID: "policy", Severity: sev,
		SDID: "imdsguard@32473", SD: [][2]string{{"result", ev.Result}, {"policy_hash", ev.Hash}}})
}

// EmitTable delivers an nftables table event.
func (p *Pipeline) EmitTable(ev *events.TableEvent) {
	p.send(sinks.Record{Time: ev.Time, JSON: p.plainJSON(ev.Time, ev), MsgID: "nftables", Severity: 4,
		SDID: "imdsguard@32473", SD: [][2]string{{"result", ev.Result}}})
}

// Reopen reopens file outputs (SIGHUP, after logrotate moved them).
func (p *Pipeline) Reopen() error {
	var errs []error
	for _, f := range p.files {
		errs = append(errs, f.Reopen())
	}
	return errors.Join(errs...)
}

// Dropped counts events network sinks lost while their collector was down
// and their queue was full.
func (p *Pipeline) Dropped() uint64 {
	var n uint64
	for _, s := range p.syslogs {
		n += s.Dropped()
	}
	return n
}

// Close flushes what it can and closes every sink.
func (p *Pipeline) Close() error {
	var errs []error
	for _, s := range p.sinks {
		errs = append(errs, s.Close())
	}
	p.sinks = nil
	return errors.Join(errs...)
}
