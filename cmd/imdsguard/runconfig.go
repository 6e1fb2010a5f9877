package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/imdsguard/imdsguard/internal/cloud"
	"github.com/imdsguard/imdsguard/internal/nodetaint"
	"github.com/imdsguard/imdsguard/internal/pindir"
	"github.com/imdsguard/imdsguard/internal/policy"
	"github.com/imdsguard/imdsguard/internal/target"
)

// runConfig is what the daemon is built from: the `run` flags, checked,
// merged with the policy's output section.
type runConfig struct {
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
	dmiDir    string

	// syslogUDPMax bounds a syslog+udp message, in octets.
	syslogUDPMax int

	level zapcore.Level
	// detected is the cloud the firmware's DMI strings name: what the
	// policy's cloud: auto resolves to, at start and at every reload.
	detected cloud.Detection
	given    map[string]bool // flags on the command line override the policy's output section
	pol      *policy.Policy
}

const (
	onExitKeep   = "keep"
	onExitDetach = "detach"
)

// detach says whether the daemon removes everything it made on the way out.
func (c *runConfig) detach() bool { return c.onExit == onExitDetach }

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

// parseRunFlags reads and checks the flags; every mistake is a usage
// error naming the flag.
func parseRunFlags(args []string, stderr io.Writer) (*runConfig, error) {
	c := &runConfig{given: map[string]bool{}}
	fs := c.flagSet()
	if err := parseFlags(fs, args, stderr); err != nil {
		return nil, err
	}
	fs.Visit(func(fl *flag.Flag) { c.given[fl.Name] = true })
	if err := c.check(); err != nil {
		return nil, usageError{err}
	}
	return c, nil
}

func (c *runConfig) flagSet() *flag.FlagSet {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.StringVar(&c.policy, "policy", "", "policy file (default: the embedded default policy)")
	fs.StringVar(&c.mode, "mode", "", "override the policy's mode: enforce or audit")
	fs.StringVar(&c.cgroup, "cgroup", "", "cgroup v2 directory to guard (default: the root of the cgroup v2 mount)")
	fs.StringVar(&c.hostNetns, "host-netns", "", "network namespace that counts as the host (default: imdsguard's own)")
	fs.StringVar(&c.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.UintVar(&c.ringbuf, "ringbuf-bytes", 256<<10, "size of the kernel's event ring buffer: a power of two, at least the page size")
	fs.StringVar(&c.criSocket, "cri-socket", "auto", "container runtime (CRI) socket for pod and container names: a path, auto (containerd, CRI-O defaults) or none")
	fs.StringVar(&c.instance, "instance-id", "", "EC2 instance id for events: an id, or auto to read it once at start over IMDSv2 (off by default)")
	fs.Var(&c.outputs, "output", "where events go, repeatable or comma-separated: stdout (default), file:/PATH, syslog+udp://HOST:PORT, syslog+tcp://HOST:PORT, syslog+tls://HOST:PORT")
	fs.StringVar(&c.format, "format", target.FormatJSON, "event format: json or ocsf (OCSF 1.3: HTTP Activity, Network Activity)")
	fs.StringVar(&c.syslogCA, "syslog-ca", "", "CA bundle that signs the syslog+tls collector's certificate (default: the system's)")
	fs.IntVar(&c.syslogUDPMax, "syslog-udp-max-bytes", target.SyslogUDPMaxBytesDefault, fmt.Sprintf("largest syslog+udp message in octets, %d to %d (RFC 5426: receivers should accept 2048); a larger one loses its structured data, then its end. Use syslog+tcp or syslog+tls for OCSF", target.SyslogUDPMaxBytesMin, target.SyslogUDPMaxBytesMax))
	fs.IntVar(&c.queue, "output-queue", 10000, "events each network output holds while its collector is down; beyond that they are counted as dropped")
	fs.DurationVar(&c.fold, "fold-window", 10*time.Second, "fold repeats of the same event from the same workload within this window into one event with a count (0: report every event)")
	fs.StringVar(&c.metrics, "metrics-addr", "", "serve Prometheus /metrics, /healthz and /readyz on this address (e.g. 127.0.0.1:9464); off when empty")
	fs.StringVar(&c.pinDir, "pin-dir", pindir.Default, "BPF filesystem directory where the programs, links and maps are pinned, so enforcement outlives the daemon and the next one takes it over")
	fs.StringVar(&c.onExit, "on-exit", onExitKeep, "on SIGTERM/SIGINT: keep (enforcement stays pinned until the next daemon or `imdsguard detach`) or detach (remove every hook, pin and table)")
	fs.StringVar(&c.taint, "startup-taint", "", "Kubernetes: remove this taint (KEY or KEY:EFFECT) from the node (NODE_NAME) once enforcing, so pods are scheduled only then; off when empty")
	fs.StringVar(&c.dmiDir, "dmi-dir", cloud.DMIDir, "directory of the firmware's DMI strings, from which the policy's cloud: auto detects the cloud")
	return fs
}

// check validates each flag on its own.
func (c *runConfig) check() error {
	if c.onExit != onExitKeep && c.onExit != onExitDetach {
		return fmt.Errorf("--on-exit: %q is not keep or detach", c.onExit)
	}
	if c.pinDir == "" || !filepath.IsAbs(c.pinDir) {
		return fmt.Errorf("--pin-dir: %q is not an absolute path", c.pinDir)
	}
	if c.taint != "" {
		if _, err := nodetaint.ParseSpec(c.taint); err != nil {
			return fmt.Errorf("--startup-taint: %w", err)
		}
	}
	if c.mode != "" {
		if err := policy.ValidateMode(c.mode); err != nil {
			return fmt.Errorf("--mode: %w", err)
		}
	}
	if pg := uint(os.Getpagesize()); c.ringbuf < pg || c.ringbuf&(c.ringbuf-1) != 0 || c.ringbuf > 1<<30 {
		return fmt.Errorf("--ringbuf-bytes: %d is not a power of two between %d and %d", c.ringbuf, pg, 1<<30)
	}
	if err := target.CheckAll(c.outputs); err != nil {
		return fmt.Errorf("--output: %w", err)
	}
	if err := target.CheckFormat(c.format); err != nil {
		return fmt.Errorf("--format: %w", err)
	}
	if err := target.CheckSyslogUDPMaxBytes(c.syslogUDPMax); err != nil {
		return fmt.Errorf("--syslog-udp-max-bytes: %w", err)
	}
	level, err := zapcore.ParseLevel(c.logLevel)
	if err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	c.level = level
	return nil
}

// loadPolicy reads the policy and takes from its output section what the
// command line left unsaid.
func (c *runConfig) loadPolicy() error {
	det, derr := cloud.Detect(c.dmiDir)
	if derr != nil {
		det = cloud.Detection{Why: derr.Error()}
	}
	c.detected = det
	pol, err := policy.LoadOrDefault(c.policy, c.mode, det.Cloud)
	if err != nil && derr != nil {
		return fmt.Errorf("%w (detecting the cloud: %w)", err, derr)
	}
	if err != nil {
		return err
	}
	c.pol = pol
	if !c.given["format"] {
		c.format = pol.Output.Format
	}
	if !c.given["output"] {
		c.outputs = pol.Output.Targets
	}
	if !c.given["syslog-ca"] {
		c.syslogCA = pol.Output.SyslogCA
	}
	if !c.given["syslog-udp-max-bytes"] && pol.Output.SyslogUDPMaxBytes != 0 {
		c.syslogUDPMax = pol.Output.SyslogUDPMaxBytes
	}
	if !c.given["output-queue"] {
		c.queue = pol.Output.Queue
	}
	if !c.given["fold-window"] {
		if c.fold, err = time.ParseDuration(pol.Output.FoldWindow); err != nil {
			return fmt.Errorf("output.foldWindow: %w", err) // validated by the parser; not reached
		}
	}
	return nil
}

// policySource is the policy's origin for the pinned meta.
func (c *runConfig) policySource() string {
	if c.policy == "" {
		return "embedded default"
	}
	if abs, err := filepath.Abs(c.policy); err == nil {
		return abs
	}
	return c.policy
}

// cloudWhy says how pol's cloud profile was chosen: named by the policy,
// or detected (det says from which DMI string). run logs it, check prints it.
func cloudWhy(pol *policy.Policy, det cloud.Detection) string {
	if pol.Cloud == cloud.Auto {
		return "detected: " + det.Why
	}
	return "named by the policy"
}

// logCloud says which cloud's profile guards the node, and why: named by
// the policy, or detected (and from which DMI string).
func logCloud(c *runConfig, log *zap.Logger) {
	log.Info("cloud", zap.String("cloud", c.pol.Profile.Name), zap.String("why", cloudWhy(c.pol, c.detected)),
		zap.Bool("proof_required", *c.pol.RequireToken), zap.Strings("endpoints", c.pol.Endpoints))
}
