package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cilium/ebpf/rlimit"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/imdsguard/imdsguard/internal/cgroupfs"
	"github.com/imdsguard/imdsguard/internal/cri"
	"github.com/imdsguard/imdsguard/internal/enforcer"
	"github.com/imdsguard/imdsguard/internal/events"
	"github.com/imdsguard/imdsguard/internal/instance"
	"github.com/imdsguard/imdsguard/internal/loader"
	"github.com/imdsguard/imdsguard/internal/metrics"
	"github.com/imdsguard/imdsguard/internal/nflog"
	"github.com/imdsguard/imdsguard/internal/nodetaint"
	"github.com/imdsguard/imdsguard/internal/ocsf"
	"github.com/imdsguard/imdsguard/internal/output"
	"github.com/imdsguard/imdsguard/internal/policy"
	"github.com/imdsguard/imdsguard/internal/sdnotify"
	"github.com/imdsguard/imdsguard/internal/uplink"
)

type runFlags struct {
	policy    string
	mode      string
	cgroup    string
	hostNetns string
	logLevel  string
	ringbuf   uint
	metrics   string
	criSocket string
	instance  string
	fold      time.Duration
	outputs   outputList
	format    string
	syslogCA  string
	queue     int
	pinDir    string
	onExit    string
	taint     string
}

const (
	onExitKeep   = "keep"
	onExitDetach = "detach"
)

// outputList is the repeatable --output flag.
type outputList []string

func (o *outputList) String() string { return strings.Join(*o, ",") }
func (o *outputList) Set(v string) error {
	for _, part := range strings.Split(v, ",") {
		if part = strings.TrimSpace(part); part != "" {
			*o = append(*o, part)
		}
	}
	return nil
}

// daemonState is what /metrics and /readyz read.
type daemonState struct {
	guard *loader.Guard
	enf   *enforcer.Enforcer
	out   *output.Pipeline
	ready atomic.Bool
}

func (d *daemonState) Counters() (loader.Counters, error) { return d.guard.Counters() }
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

func runCommand(args []string, stdout, stderr io.Writer) error {
	var f runFlags
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.StringVar(&f.policy, "policy", "", "policy file (default: the embedded default policy)")
	fs.StringVar(&f.mode, "mode", "", "override the policy's mode: enforce or audit")
	fs.StringVar(&f.cgroup, "cgroup", "", "cgroup v2 directory to guard (default: the root of the cgroup v2 mount)")
	fs.StringVar(&f.hostNetns, "host-netns", "", "network namespace that counts as the host (default: imdsguard's own)")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.UintVar(&f.ringbuf, "ringbuf-bytes", 256<<10, "size of the kernel's event ring buffer: a power of two, at least the page size")
	fs.StringVar(&f.criSocket, "cri-socket", "auto", "container runtime (CRI) socket for pod and container names: a path, auto (containerd, CRI-O defaults) or none")
	fs.StringVar(&f.instance, "instance-id", "", "EC2 instance id for events: an id, or auto to read it once at start over IMDSv2 (off by default)")
	fs.Var(&f.outputs, "output", "where events go, repeatable or comma-separated: stdout (default), file:/PATH, syslog+udp://HOST:PORT, syslog+tcp://HOST:PORT, syslog+tls://HOST:PORT")
	fs.StringVar(&f.format, "format", output.FormatJSON, "event format: json or ocsf (OCSF 1.3: HTTP Activity, Network Activity)")
	fs.StringVar(&f.syslogCA, "syslog-ca", "", "CA bundle that signs the syslog+tls collector's certificate (default: the system's)")
	fs.IntVar(&f.queue, "output-queue", 10000, "events each network output holds while its collector is down; beyond that they are counted as dropped")
	fs.DurationVar(&f.fold, "fold-window", 10*time.Second, "fold repeats of the same event from the same workload within this window into one event with a count (0: report every event)")
	fs.StringVar(&f.metrics, "metrics-addr", "", "serve Prometheus /metrics, /healthz and /readyz on this address (e.g. 127.0.0.1:9464); off when empty")
	fs.StringVar(&f.pinDir, "pin-dir", loader.DefaultPinDir, "BPF filesystem directory where the programs, links and maps are pinned, so enforcement outlives the daemon and the next one takes it over")
	fs.StringVar(&f.onExit, "on-exit", onExitKeep, "on SIGTERM/SIGINT: keep (enforcement stays pinned until the next daemon or `imdsguard detach`) or detach (remove every hook, pin and table)")
	fs.StringVar(&f.taint, "startup-taint", "", "Kubernetes: remove this taint (KEY or KEY:EFFECT) from the node (NODE_NAME) once enforcing, so pods are scheduled only then; off when empty")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	given := map[string]bool{} // flags on the command line override the policy's output section
	fs.Visit(func(fl *flag.Flag) { given[fl.Name] = true })
	if f.onExit != onExitKeep && f.onExit != onExitDetach {
		return usageError{fmt.Errorf("--on-exit: %q is not keep or detach", f.onExit)}
	}
	if f.pinDir == "" || !filepath.IsAbs(f.pinDir) {
		return usageError{fmt.Errorf("--pin-dir: %q is not an absolute path", f.pinDir)}
	}
	if f.taint != "" {
		if _, err := nodetaint.ParseSpec(f.taint); err != nil {
			return usageError{fmt.Errorf("--startup-taint: %w", err)}
		}
	}
	if f.mode != "" {
		if err := policy.ValidateMode(f.mode); err != nil {
			return usageError{fmt.Errorf("--mode: %w", err)}
		}
	}
	if pg := uint(os.Getpagesize()); f.ringbuf < pg || f.ringbuf&(f.ringbuf-1) != 0 || f.ringbuf > 1<<30 {
		return usageError{fmt.Errorf("--ringbuf-bytes: %d is not a power of two between %d and %d", f.ringbuf, pg, 1<<30)}
	}
	if err := output.ParseTargets(f.outputs); err != nil {
		return usageError{fmt.Errorf("--output: %w", err)}
	}
	if f.format != output.FormatJSON && f.format != output.FormatOCSF {
		return usageError{fmt.Errorf("--format: %q is not json or ocsf", f.format)}
	}
	level, err := zapcore.ParseLevel(f.logLevel)
	if err != nil {
		return usageError{fmt.Errorf("--log-level: %w", err)}
	}
	log := newLogger(stderr, level)
	defer log.Sync() //nolint:errcheck // nothing to do if stderr is gone
	// Read (and cleared) before anything can start a child process.
	notifier := sdnotify.FromEnv()

	pol, err := enforcer.LoadPolicy(f.policy, f.mode)
	if err != nil {
		return err
	}
	if !given["format"] {
		f.format = pol.Output.Format
	}
	if !given["output"] {
		f.outputs = pol.Output.Targets
	}
	if !given["syslog-ca"] {
		f.syslogCA = pol.Output.SyslogCA
	}
	if !given["output-queue"] {
		f.queue = pol.Output.Queue
	}
	if !given["fold-window"] {
		if f.fold, err = time.ParseDuration(pol.Output.FoldWindow); err != nil {
			return fmt.Errorf("output.foldWindow: %w", err) // validated by the parser; not reached
		}
	}

	if err := checkPrivileges(); err != nil {
		return err
	}
	warnDegraded(log)
	cgroupDir := f.cgroup
	if cgroupDir == "" {
		if cgroupDir, err = cgroupfs.V2Mount(); err != nil {
			return err
		}
	} else if err := cgroupfs.IsV2(cgroupDir); err != nil {
		return fmt.Errorf("--cgroup: %w", err)
	}
	// Paths in events and rules are relative to the root of the hierarchy
	// that --cgroup is in (in a container: the host's, mounted in).
	cgroupMount, err := cgroupfs.MountOf(cgroupDir)
	if err != nil {
		return fmt.Errorf("--cgroup: %w", err)
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return fmt.Errorf("raising the locked-memory limit for BPF maps: %w", err)
	}
	if err := loader.CheckKernel(); err != nil {
		return err
	}
	hostCookie, err := loader.NetnsCookie(f.hostNetns)
	if err != nil {
		return fmt.Errorf("host network namespace: %w", err)
	}
	plan, err := enforcer.MakePlan(pol, cgroupMount)
	if err != nil {
		return err
	}
	// A startup taint that could never be removed would keep the node
	// unschedulable: refuse to start rather than find out later.
	var taints *nodetaint.Client
	var node string
	if f.taint != "" {
		if node, err = nodetaint.NodeName(os.Getenv); err != nil {
			return fmt.Errorf("--startup-taint: %w", err)
		}
		if taints, err = nodetaint.InCluster(log); err != nil {
			return fmt.Errorf("--startup-taint: %w", err)
		}
	}

	guard, err := loader.Load(plan.Compiled, loader.Options{
		Cgroup:          cgroupDir,
		HostNetnsCookie: hostCookie,
		RingBufBytes:    uint32(f.ringbuf),
		CgroupRules:     plan.Cgroups,
		PinDir:          f.pinDir,
		LockWait:        30 * time.Second,
		Meta: loader.Meta{
			Version:      version,
			Mode:         pol.Mode,
			PolicyHash:   plan.Hash,
			PolicySource: policySource(f.policy),
			HostNetns:    f.hostNetns,
		},
	}, log)
	if err != nil {
		return err
	}
	// From here on every exit path leaves the host as --on-exit says: the
	// new enforcement pinned (keep), or nothing at all (detach). Never
	// half of it.
	detach := f.onExit == onExitDetach
	defer func() {
		release := guard.Release
		if detach {
			release = guard.Remove
		}
		if err := release(); err != nil {
			log.Error("releasing the guard", zap.Error(err))
		}
	}()

	// Connections opened before the guard must not become a way around it.
	// A takeover needs none: the pinned programs judged every connection
	// made while no daemon ran.
	var adopted uint64
	if guard.Takeover() == loader.TakeoverNone {
		if adopted, err = guard.Adopt(); err != nil {
			return fmt.Errorf("adopting connections opened before start: %w", err)
		}
	}

	cgroups, err := events.NewCgroupResolver(cgroupMount)
	if err != nil {
		log.Warn("cgroup paths will be missing from events", zap.Error(err))
		cgroups = nil
	} else {
		defer cgroups.Close()
	}
	hostname, _ := os.Hostname() // best effort: empty rather than invented
	sink, err := output.New(output.Config{
		Format:   f.format,
		Targets:  f.outputs,
		SyslogCA: f.syslogCA,
		Product:  ocsf.Product{Name: "imdsguard", VendorName: "imdsguard", Version: version, Hostname: hostname},
		Hostname: hostname,
		Queue:    f.queue,
	}, stdout, log)
	if err != nil {
		return err
	}
	defer func() {
		if err := sink.Close(); err != nil {
			log.Warn("closing outputs", zap.Error(err))
		}
	}()
	pods, err := uplink.NewPods(guard.UplinkProgram())
	if err != nil {
		return fmt.Errorf("uplink guard for pods: %w", err)
	}
	enf := enforcer.New(guard, plan, enforcer.Options{
		PolicyPath:   f.policy,
		ModeOverride: f.mode,
		CgroupMount:  cgroupMount,
		Rescan:       500 * time.Millisecond,
		Pods:         pods,
	}, sink, log)
	if err := enf.StartTable(f.hostNetns); err != nil {
		return fmt.Errorf("nftables layer: %w", err)
	}
	defer func() {
		if err := enf.StopTable(detach); err != nil {
			log.Error("removing the nftables table", zap.Error(err))
		}
	}()
	uplinks, err := startUplinkGuard(guard, pol, f.hostNetns, log)
	if err != nil {
		return err
	}
	defer func() {
		if err := uplinks.Close(detach); err != nil {
			log.Error("removing the uplink guard", zap.Error(err))
		}
		if detach {
			if _, err := uplink.RemoveFromPods(f.hostNetns, guard.MapIDs()); err != nil {
				log.Error("removing the uplink guard from pods", zap.Error(err))
			}
		}
	}()
	// What the table stops is reported too (in the host's namespace).
	if tableLog, err := nflog.Open(enforcer.NftLogGroup, f.hostNetns); err != nil {
		log.Warn("not reading the nftables log: packets the table stops are counted but not reported", zap.Error(err))
	} else {
		defer tableLog.Close()
		go enforcer.ReadTableLog(tableLog, enf.Audit, sink, log)
	}
	ropts := events.ReaderOptions{Cgroups: cgroups, Rules: enf.RuleName}
	ropts.Hostname = hostname
	ropts.InstanceID = f.instance
	if f.instance == "auto" {
		// over IMDSv2, from the host's network namespace, through the guard
		ep := pol.Endpoints[0]
		if ropts.InstanceID, err = instance.Fetch(context.Background(), ep, f.hostNetns); err != nil {
			log.Warn("instance id not read; events carry none", zap.Error(err))
			ropts.InstanceID = ""
		}
	}
	if sock := f.criSocket; sock != "none" {
		var names interface {
			Lookup(string) (cri.Names, bool)
			Close() error
		}
		if sock == "auto" {
			names = cri.NewAuto()
		} else if names, err = cri.Dial(sock); err != nil {
			log.Warn("no pod names in events", zap.Error(err))
			names = nil
		}
		if names != nil {
			defer names.Close()
			ropts.Names = func(id string) (string, string, string, bool) {
				n, ok := names.Lookup(id)
				return n.Pod, n.Namespace, n.Container, ok
			}
		}
	}
	folder := events.NewFolder(sink, f.fold)
	reader, err := events.NewReader(guard.Events(), ropts, folder, log)
	if err != nil {
		return err
	}
	stopReader := make(chan struct{})
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		reader.Run(stopReader)
	}()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	state := &daemonState{guard: guard, enf: enf, out: sink}
	if f.metrics != "" {
		if err := metrics.Serve(ctx, f.metrics, state, log); err != nil {
			return err
		}
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	// SIGHUP also reopens file outputs (logrotate): the enforcer gets its
	// own copy of the signal to reload the policy.
	policyHup := make(chan os.Signal, 1)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case s := <-hup:
				if err := sink.Reopen(); err != nil {
					log.Warn("reopening output files", zap.Error(err))
				}
				select {
				case policyHup <- s:
				default:
				}
			}
		}
	}()
	enfDone := make(chan struct{})
	go func() {
		defer close(enfDone)
		enf.Run(ctx, policyHup)
	}()
	go uplinks.Run(ctx)

	log.Info("enforcing",
		zap.String("mode", pol.Mode),
		zap.Strings("hooks", guard.Hooks()),
		zap.Strings("uplinks", uplinks.Devices()),
		zap.String("cgroup", cgroupDir),
		zap.Strings("endpoints", pol.Endpoints),
		zap.Bool("block_non_host_netns", *pol.BlockNonHostNetns),
		zap.Bool("require_token", *pol.RequireToken),
		zap.Bool("refuse_forwarded", *pol.RefuseForwarded),
		zap.Strings("credential_paths", pol.CredentialPaths),
		zap.Int("rules", len(pol.Rules)),
		zap.String("policy_hash", plan.Hash),
		zap.Uint64("adopted_connections", adopted),
		zap.String("pin_dir", f.pinDir),
		zap.String("takeover", string(guard.Takeover())),
		zap.String("on_exit", f.onExit),
		zap.Uint64("host_netns_cookie", hostCookie),
		zap.String("version", version))

	go func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				folder.Flush(false)
			}
		}
	}()
	state.ready.Store(true)
	// Units ordered after imdsguard (containerd, kubelet) start now.
	if err := notifier.Ready(fmt.Sprintf("enforcing (%s, policy %s, takeover %s)", pol.Mode, plan.Hash, guard.Takeover())); err != nil {
		log.Warn("telling systemd the daemon is ready", zap.Error(err))
	}
	if taints != nil {
		go removeStartupTaint(ctx, taints, node, f.taint, log)
	}
	watchLostEvents(ctx, guard, log)
	state.ready.Store(false)
	if err := notifier.Stopping(); err != nil {
		log.Warn("telling systemd the daemon is stopping", zap.Error(err))
	}
	<-enfDone

	// With detach, unhook first so no new events arrive, then drain what
	// is buffered. With keep, events the reader leaves in the pinned ring
	// buffer are the next daemon's to report.
	if detach {
		if err := guard.Detach(); err != nil {
			log.Error("detaching", zap.Error(err))
		}
	}
	close(stopReader)
	<-readerDone
	reader.Close()
	folder.Flush(true)
	fields := []zap.Field{}
	if c, err := guard.Counters(); err == nil {
		fields = append(fields, zap.Object("totals", totals(c)), zap.Uint64("events_lost", c.EventsLost()))
	}
	fields = append(fields, zap.Uint64("output_dropped", sink.Dropped()))
	fields = append(fields, zap.Any("policy_reloads", enf.Reloads()), zap.Uint64("nftables_restores", enf.TableRestores()))
	if detach {
		log.Info("detached; exiting", fields...)
	} else {
		fields = append(fields, zap.String("pin_dir", f.pinDir))
		log.Info("exiting; enforcement stays pinned (imdsguard detach removes it)", fields...)
	}
	return nil
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

func policySource(path string) string {
	if path == "" {
		return "embedded default"
	}
	if abs, err := filepath.Abs(path); err == nil {
		return abs
	}
	return path
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
type totals loader.Counters

func (t totals) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	for _, v := range loader.Counters(t).Verdicts() {
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

// warnDegraded names the capabilities whose absence costs visibility, not
// enforcement, so a too-tight sandbox shows in the log.
func warnDegraded(log *zap.Logger) {
	missing, err := missingCapabilities([]capability{capSysPtrace, capDACReadSearch})
	if err != nil || len(missing) == 0 {
		return
	}
	for _, c := range missing {
		switch c {
		case capSysPtrace:
			log.Warn("without CAP_SYS_PTRACE: events lack exe and cmdline of other users' processes, and pods allowed by allowNonHostNetns are not let through the nftables table (their network namespaces cannot be read)")
		case capDACReadSearch:
			log.Warn("without CAP_DAC_READ_SEARCH: events lack cgroup paths (and so container and pod names)")
		}
	}
}

// startUplinkGuard puts the uplink guard on the devices of the host's
// namespace that packets to the endpoints can leave by.
func startUplinkGuard(guard *loader.Guard, pol *policy.Policy, hostNetns string, log *zap.Logger) (*uplink.Guard, error) {
	var addrs []netip.Addr
	for _, s := range pol.Endpoints {
		ep, err := policy.ParseEndpoint(s)
		if err != nil {
			return nil, err
		}
		addrs = append(addrs, ep.Addr().Unmap())
	}
	g, err := uplink.Start(guard.UplinkProgram(), addrs, hostNetns, log)
	if err != nil {
		return nil, fmt.Errorf("uplink guard: %w", err)
	}
	return g, nil
}
