package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/imdsguard/imdsguard/internal/controller"
	"github.com/imdsguard/imdsguard/internal/counters"
	"github.com/imdsguard/imdsguard/internal/loader"
	"github.com/imdsguard/imdsguard/internal/metrics"
	"github.com/imdsguard/imdsguard/internal/nodetaint"
	"github.com/imdsguard/imdsguard/internal/output"
	"github.com/imdsguard/imdsguard/internal/sdnotify"
)

// daemonState is what /metrics and /readyz read.
type daemonState struct {
	guard *loader.Guard
	enf   *controller.Controller
	out   *output.Pipeline
	ready atomic.Bool
}

func (d *daemonState) Counters() (counters.Totals, error) { return d.guard.Counters() }
func (d *daemonState) Hooks() []string {
	if !d.ready.Load() {
		return nil
	}
	return d.guard.Hooks()
}
func (d *daemonState) Reloads() map[string]uint64 { return d.enf.Reloads() }
func (d *daemonState) Ready() bool                { return d.ready.Load() }
func (d *daemonState) LastRescan() time.Time      { return d.enf.LastRescan() }
func (d *daemonState) OutputDropped() uint64      { return d.out.Dropped() }

// runCommand is `imdsguard run`: configure, start, run until SIGINT or
// SIGTERM, shut down. The signal context comes first, so that a signal
// during start-up ends the daemon through the same --on-exit handling.
func runCommand(args []string, stdout, stderr io.Writer) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	cfg, err := parseRunFlags(args, stderr)
	if err != nil {
		return err
	}
	log := newLogger(stderr, cfg.level)
	defer log.Sync() //nolint:errcheck // nothing to do if stderr is gone
	// Read (and cleared) before anything can start a child process.
	notifier := sdnotify.FromEnv()
	if err := cfg.loadPolicy(); err != nil {
		return err
	}
	d, err := startDaemon(ctx, cfg, stdout, log)
	if err != nil {
		return err
	}
	// After the start, so that a start that fails prints one line: why.
	logCloud(cfg, log)
	defer d.close()
	return d.run(ctx, notifier)
}

// run supervises the daemon's goroutines until ctx ends, then shuts down
// in order: stop judging new cgroups, unhook (detach), drain the events.
func (d *daemon) run(ctx context.Context, notifier *sdnotify.Notifier) error {
	state := &daemonState{guard: d.guard, enf: d.enf, out: d.sink}
	if d.cfg.metrics != "" {
		if err := metrics.Serve(ctx, d.cfg.metrics, state, d.log); err != nil {
			return err
		}
	}
	var wg sync.WaitGroup
	stopReader := make(chan struct{})
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		d.reader.Run(stopReader)
	}()
	policyHup := d.forwardHUP(ctx, &wg)
	enfDone := make(chan struct{})
	go func() {
		defer close(enfDone)
		d.enf.Run(ctx, policyHup)
	}()
	wg.Go(func() { d.uplinks.Run(ctx) })
	wg.Go(func() { d.table.Run(ctx) })
	wg.Go(func() { d.flushFolds(ctx) })
	if ctx.Err() == nil { // not signalled during start-up
		d.logEnforcing()
		state.ready.Store(true)
		d.announce(ctx, notifier)
	}
	watchLostEvents(ctx, d.guard, d.log)
	state.ready.Store(false)
	if err := notifier.Stopping(); err != nil {
		d.log.Warn("telling systemd the daemon is stopping", zap.Error(err))
	}
	<-enfDone
	wg.Wait()
	d.shutdown(stopReader, readerDone)
	return nil
}

// forwardHUP reopens file outputs on SIGHUP (logrotate) and hands the
// controller its own copy of the signal, to reload the policy.
func (d *daemon) forwardHUP(ctx context.Context, wg *sync.WaitGroup) <-chan os.Signal {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	policyHup := make(chan os.Signal, 1)
	wg.Go(func() {
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case s := <-hup:
				if err := d.sink.Reopen(); err != nil {
					d.log.Warn("reopening output files", zap.Error(err))
				}
				select {
				case policyHup <- s:
				default:
				}
			}
		}
	})
	return policyHup
}

// flushFolds reports folded repeats whose window has passed.
func (d *daemon) flushFolds(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			d.folder.Flush(false)
		}
	}
}

// announce tells systemd (units ordered after imdsguard, containerd and
// kubelet, start now) and Kubernetes (the startup taint) that the node is
// guarded.
func (d *daemon) announce(ctx context.Context, notifier *sdnotify.Notifier) {
	if err := notifier.Ready(fmt.Sprintf("enforcing (%s, policy %s, takeover %s)", d.cfg.pol.Mode, d.plan.Hash, d.guard.Takeover())); err != nil {
		d.log.Warn("telling systemd the daemon is ready", zap.Error(err))
	}
	if d.taints != nil {
		go removeStartupTaint(ctx, d.taints, d.node, d.cfg.taint, d.log)
	}
}

func (d *daemon) logEnforcing() {
	pol := d.cfg.pol
	d.log.Info("enforcing",
		zap.String("mode", pol.Mode),
		zap.Strings("hooks", d.guard.Hooks()),
		zap.Strings("uplinks", d.uplinks.Devices()),
		zap.String("cgroup", d.cgroupDir),
		zap.Strings("endpoints", pol.Endpoints),
		zap.Bool("block_non_host_netns", *pol.BlockNonHostNetns),
		zap.Bool("require_token", *pol.RequireToken),
		zap.Bool("refuse_forwarded", *pol.RefuseForwarded),
		zap.Strings("credential_paths", pol.CredentialPaths),
		zap.Int("rules", len(pol.Rules)),
		zap.String("policy_hash", d.plan.Hash),
		zap.Uint64("adopted_connections", d.adopted),
		zap.String("pin_dir", d.cfg.pinDir),
		zap.String("takeover", string(d.guard.Takeover())),
		zap.String("on_exit", d.cfg.onExit),
		zap.Uint64("host_netns_cookie", d.hostCookie),
		zap.Uint64("host_netns_inode", d.hostInode),
		zap.String("host_netns_path", d.hostPath),
		zap.String("version", version))
}

// shutdown unhooks first with detach, so no new events arrive, then
// drains what is buffered. With keep, events the reader leaves in the
// pinned ring buffer are the next daemon's to report. The cleanup stack
// (close) runs after.
func (d *daemon) shutdown(stopReader, readerDone chan struct{}) {
	detach := d.cfg.detach()
	if detach {
		if err := d.guard.Detach(); err != nil {
			d.log.Error("detaching", zap.Error(err))
		}
	}
	close(stopReader)
	<-readerDone
	d.reader.Close()
	d.folder.Flush(true)
	fields := []zap.Field{}
	if c, err := d.guard.Counters(); err == nil {
		fields = append(fields, zap.Object("totals", totals(c)), zap.Uint64("events_lost", c.EventsLost()))
	}
	fields = append(fields, zap.Uint64("output_dropped", d.sink.Dropped()))
	fields = append(fields, zap.Any("policy_reloads", d.enf.Reloads()), zap.Uint64("nftables_restores", d.table.Restores()))
	if detach {
		d.log.Info("detached; exiting", fields...)
	} else {
		fields = append(fields, zap.String("pin_dir", d.cfg.pinDir))
		d.log.Info("exiting; enforcement stays pinned (imdsguard detach removes it)", fields...)
	}
}

// removeStartupTaint removes the node's startup taint, retrying until it
// succeeds: the API server may be unreachable for a while, and a node that
// keeps the taint gets no pods.
func removeStartupTaint(ctx context.Context, c *nodetaint.Client, node, spec string, log *zap.Logger) {
	for {
		n, err := c.RemoveTaint(ctx, node, spec)
		if err == nil {
			log.Info("startup taint handled; the node can take pods", zap.String("node", node), zap.String("taint", spec), zap.Int("removed", n))
			return
		}
		log.Error("startup taint not removed: the node takes no pods until it is; retrying in 30s", zap.String("node", node), zap.Error(err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(30 * time.Second):
		}
	}
}

// watchLostEvents reports, until ctx ends, every rise of the kernel's count of
// events the full ring buffer could not take. Verdict counters stay exact.
func watchLostEvents(ctx context.Context, guard *loader.Guard, log *zap.Logger) {
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	var reported, unguarded uint64
	if c, err := guard.Counters(); err == nil {
		unguarded = c.Unguarded() // adoption at start reported its own
	}
	check := func() {
		guard.DrainRetired()
		c, err := guard.Counters()
		if err != nil {
			log.Warn("reading counters", zap.Error(err))
			return
		}
		if n := c.Unguarded(); n > unguarded {
			// The egress guard still holds back their payload: they fail
			// closed, but say why.
			log.Warn("new IMDS connections could not be put under the request judge (another program owns their sk_msg); their requests are held back",
				zap.Uint64("connections", n-unguarded))
			unguarded = n
		}
		if lost := c.EventsLost(); lost > reported {
			log.Warn("event ring buffer full: events lost (verdict counters stay exact)",
				zap.Uint64("lost", lost-reported), zap.Uint64("lost_total", lost))
			reported = lost
		}
	}
	for {
		select {
		case <-ctx.Done():
			check()
			return
		case <-tick.C:
			check()
		}
	}
}

// totals renders the non-zero verdict counters as "kind_action_reason": n.
type totals counters.Totals

func (t totals) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	for _, v := range counters.Totals(t).Verdicts() {
		enc.AddUint64(v.Name(), v.Count)
	}
	return nil
}

func newLogger(w io.Writer, level zapcore.Level) *zap.Logger {
	cfg := zap.NewProductionEncoderConfig()
	cfg.TimeKey = "time"
	cfg.EncodeTime = zapcore.RFC3339NanoTimeEncoder
	core := zapcore.NewCore(zapcore.NewJSONEncoder(cfg), zapcore.Lock(zapcore.AddSync(w)), level)
	return zap.New(core)
}

// checkPrivileges names the missing capabilities before anything is loaded.
// CAP_SYS_ADMIN is always needed: adopting connections enters network
// namespaces (the daemon's own included) with setns.
func checkPrivileges() error {
	missing, err := missingCapabilities([]capability{capBPF, capNetAdmin, capPerfmon, capSysAdmin})
	if err != nil {
		return err
	}
	if len(missing) > 0 {
		return fmt.Errorf("must run as root (missing %s)", joinCaps(missing))
	}
	return nil
}

// warnDegraded names the capability whose absence costs visibility, not
// enforcement, so a too-tight sandbox shows in the log.
func warnDegraded(log *zap.Logger) {
	missing, err := missingCapabilities([]capability{capSysPtrace})
	if err == nil && len(missing) > 0 {
		log.Warn("without CAP_SYS_PTRACE: events lack exe and cmdline of other users' processes, and pods allowed by allowNonHostNetns are not let through the nftables table (their network namespaces cannot be read)")
	}
}
