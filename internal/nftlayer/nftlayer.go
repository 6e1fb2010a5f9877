// Package nftlayer runs the daemon's nftables layer: it keeps the table
// `inet imdsguard` (written by internal/nft) what the policy in force asks
// for, lets through the addresses of the pods an allowNonHostNetns rule
// allows (once their devices are guarded) and follows them as they come and
// go, and restores the table when someone deletes or flushes it. It knows
// nothing of policy files: the policy controller (internal/controller) says
// what it wants as a Want.
package nftlayer

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/imdsguard/imdsguard/internal/netnsexec"
	"github.com/imdsguard/imdsguard/internal/nft"
)

// LogGroup is the NFLOG group the table logs dropped packets to.
const LogGroup = 0x1d5 // "imds"-ish, unlikely to clash with other users

// logRate is how many dropped packets a second the table logs.
const logRate = 10

// watchdogInterval is how often Run looks for a deleted or flushed table:
// the README promises a restore within about two seconds.
const watchdogInterval = 2 * time.Second

// Want is the table the policy in force asks for.
type Want struct {
	On        bool // false: no table (policy nftables: false)
	Reject    bool // answer with a TCP reset rather than drop silently
	Audit     bool // count and log only: packets pass
	Endpoints []netip.AddrPort
	// AllowedCgroups are the cgroups (paths relative to the cgroup mount)
	// whose processes' network namespaces are let through: the pods an
	// allowNonHostNetns rule lets reach IMDS.
	AllowedCgroups []string
}

// Options configure the layer.
type Options struct {
	HostNetns   string // the host's network namespace (a path); "" for the daemon's own
	CgroupMount string // the cgroup v2 mount AllowedCgroups are relative to
	// Pods guards the devices of allowed pods (nil: their addresses are
	// let through without).
	Pods PodGuard
	// Restored, when set, is told of each restore of a deleted or flushed
	// table (the daemon reports it as an event).
	Restored func(table string, at time.Time)
}

// kernelTable is what the layer needs of the kernel's table
// (*nft.Table), so that unit tests can put a fake in its place.
type kernelTable interface {
	Apply(nft.Config) error
	Check(rules int) (bool, error)
	SetAllowed(add, remove []netip.Addr) error
	Remove() error
}

// Table is the nftables layer. Its methods may be called from any
// goroutine.
type Table struct {
	opts      Options
	log       *zap.Logger
	kernel    kernelTable // nil when the kernel has no nf_tables: the layer does nothing
	netnsFd   int         // the host's namespace under --host-netns, else -1
	hostNetns [2]uint64
	selfNetns [2]uint64 // the daemon's own (the host's unless --host-netns)

	mu       sync.Mutex
	cfg      nft.Config // what was written last
	on       bool
	restores uint64
	podErrs  map[[2]uint64]string // the last error guarding each allowed pod, logged once
}

// Start opens the layer in the host's network namespace; the table is
// written at the first Sync. A kernel without nf_tables gets one warning
// and the daemon runs with eBPF alone.
func Start(opts Options, log *zap.Logger) (*Table, error) {
	t := newTable(opts, log)
	var err error
	if t.hostNetns, err = netnsexec.ID(opts.HostNetns); err != nil {
		return nil, err
	}
	if t.selfNetns, err = netnsexec.ID(""); err != nil {
		return nil, err
	}
	if opts.HostNetns != "" {
		fd, err := unix.Open(opts.HostNetns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("opening %s: %w", opts.HostNetns, err)
		}
		t.netnsFd = fd
	}
	k := nft.New(t.netnsFd)
	if err := k.Supported(); err != nil {
		log.Warn("nftables unavailable: running with the eBPF layer only (packets routed from other namespaces are not covered)", zap.Error(err))
		return t, nil
	}
	t.kernel = k
	return t, nil
}

func newTable(opts Options, log *zap.Logger) *Table {
	return &Table{opts: opts, log: log, netnsFd: -1, podErrs: map[[2]uint64]string{}}
}

// config is the table want asks for, letting allowed through.
func config(want Want, allowed []netip.Addr) nft.Config {
	return nft.Config{
		Endpoints: want.Endpoints,
		Reject:    want.Reject,
		Audit:     want.Audit,
		LogGroup:  LogGroup,
		LogRate:   logRate,
		Allowed:   allowed,
	}
}

// ruleCount is how many rules the table written for cfg has: fewer (or
// more) mean someone changed it.
func ruleCount(cfg nft.Config) int { return len(cfg.Endpoints) * nft.RulesPerEndpoint(cfg) }

// Sync writes the table anew as want says, with the addresses of the
// allowed pods as they are now, or removes it when want is off.
func (t *Table) Sync(want Want) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.kernel == nil {
		return nil
	}
	if !want.On {
		if t.on {
			t.on = false
			if err := t.kernel.Remove(); err != nil {
				return err
			}
			t.log.Info("nftables layer off (policy nftables: false): table removed")
		}
		return nil
	}
	cfg := config(want, t.allowedSources(want.AllowedCgroups))
	if err := t.kernel.Apply(cfg); err != nil {
		return err
	}
	t.cfg, t.on = cfg, true
	t.log.Debug("nftables table written", zap.Int("endpoints", len(cfg.Endpoints)), zap.Int("allowed_sources", len(cfg.Allowed)))
	return nil
}

// FollowPods follows pods that come and go in allowedCgroups: only the
// allowed sets of the table change, the rules stay.
func (t *Table) FollowPods(allowedCgroups []string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.on {
		return nil
	}
	now := t.allowedSources(allowedCgroups)
	add, remove := diffAddrs(t.cfg.Allowed, now)
	if len(add)+len(remove) == 0 {
		return nil
	}
	if err := t.kernel.SetAllowed(add, remove); err != nil {
		return err
	}
	t.cfg.Allowed = now
	return nil
}

// diffAddrs says what to add to was, and remove from it, to make now.
func diffAddrs(was, now []netip.Addr) (add, remove []netip.Addr) {
	for _, a := range now {
		if !slices.Contains(was, a) {
			add = append(add, a)
		}
	}
	for _, a := range was {
		if !slices.Contains(now, a) {
			remove = append(remove, a)
		}
	}
	return add, remove
}

// Run restores the table, until ctx ends, whenever someone deleted or
// flushed it (an admin, a tool that flushes the whole ruleset).
func (t *Table) Run(ctx context.Context) {
	tick := time.NewTicker(watchdogInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			t.restoreIfChanged()
		}
	}
}

// restoreIfChanged writes the table again if it is gone or its rules are.
func (t *Table) restoreIfChanged() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.on {
		return
	}
	ok, err := t.kernel.Check(ruleCount(t.cfg))
	if err != nil {
		t.log.Warn("checking the nftables table", zap.Error(err))
		return
	}
	if ok {
		return
	}
	if err := t.kernel.Apply(t.cfg); err != nil {
		t.log.Error("restoring the nftables table", zap.Error(err))
		return
	}
	t.restores++
	t.log.Warn("nftables table inet " + nft.TableName + " was deleted or changed: restored")
	if t.opts.Restored != nil {
		t.opts.Restored("inet "+nft.TableName, time.Now())
	}
}

// Stop releases the namespace at daemon exit, and removes the table if
// remove (--on-exit detach); otherwise the table stays, like the pinned
// programs, until the next daemon takes it over or `imdsguard detach`.
func (t *Table) Stop(remove bool) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	var err error
	if remove && t.kernel != nil && t.on {
		err = t.kernel.Remove()
		t.on = false
	}
	if t.netnsFd >= 0 {
		unix.Close(t.netnsFd)
		t.netnsFd = -1
	}
	return err
}

// Restores counts restorations of a deleted or flushed table.
func (t *Table) Restores() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.restores
}
