package enforcer

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/imdsguard/imdsguard/internal/events"
	"github.com/imdsguard/imdsguard/internal/netnsexec"
	"github.com/imdsguard/imdsguard/internal/nft"
	"github.com/imdsguard/imdsguard/internal/policy"
)

// NftLogGroup is the NFLOG group the table logs dropped packets to.
const NftLogGroup = 0x1d5 // "imds"-ish, unlikely to clash with other users

// nftConfig is the table a plan asks for.
func nftConfig(p *Plan, allowed []netip.Addr) (nft.Config, error) {
	cfg := nft.Config{
		Reject:   p.Policy.NftablesAction == policy.NftablesReject,
		Audit:    p.Policy.Mode == policy.ModeAudit,
		LogGroup: NftLogGroup,
		LogRate:  10,
		Allowed:  allowed,
	}
	var err error
	cfg.Endpoints, err = policy.ParseEndpoints(p.Policy.Endpoints)
	return cfg, err
}

// allowedSources are the addresses of the network namespaces of processes
// in cgroups that a rule with allowNonHostNetns matches: the pods the
// policy lets reach IMDS. nftables sees packets, not cgroups, so a pod is
// named by its addresses. A pod whose devices cannot be guarded
// (admitNetns) is left out: its packets are dropped, not let through
// unjudged.
func (e *Enforcer) allowedSources() []netip.Addr {
	var globs []string
	for _, r := range e.plan.Policy.Rules {
		if r.AllowNonHostNetns && !r.Deny && r.Match.Cgroup != "" {
			globs = append(globs, r.Match.Cgroup)
		}
	}
	if len(globs) == 0 {
		return nil
	}
	// The host's namespace is never a source (its packets are not
	// forwarded), nor is the daemon's own (the same one, but under
	// --host-netns): its devices are not a pod's to guard.
	seen := map[[2]uint64]bool{e.hostNetns: true, e.selfNetns: true}
	var out []netip.Addr
	for _, path := range e.plan.tree {
		if !slices.ContainsFunc(globs, func(g string) bool { return policy.MatchCgroup(g, path) }) {
			continue
		}
		data, err := os.ReadFile(filepath.Join(e.opts.CgroupMount, path, "cgroup.procs"))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(data)) {
			pid, err := strconv.Atoi(f)
			if err != nil {
				continue
			}
			nsPath := fmt.Sprintf("/proc/%d/ns/net", pid)
			id, err := netnsexec.ID(nsPath)
			if err != nil || seen[id] {
				continue
			}
			seen[id] = true
			out = append(out, e.admitNetns(nsPath, id, path)...)
		}
	}
	for id := range e.podErrs {
		if !seen[id] {
			delete(e.podErrs, id)
		}
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return slices.Compact(out)
}

// admitNetns guards the devices of an allowed pod's namespace and lists
// its global unicast addresses; none when it cannot be guarded.
func (e *Enforcer) admitNetns(nsPath string, id [2]uint64, cgroup string) []netip.Addr {
	h, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		return nil
	}
	defer nl.Close()
	if e.opts.Pods != nil {
		pod, err := e.opts.Pods.Guard(nl)
		if err == nil && !pod {
			return nil // not a namespace the node routes for
		}
		if err != nil {
			if e.podErrs[id] != err.Error() {
				e.podErrs[id] = err.Error()
				e.log.Error("an allowed pod's devices cannot be guarded against hand-made packets: its packets to IMDS are dropped",
					zap.String("cgroup", cgroup), zap.String("netns", nsPath), zap.Error(err))
			}
			return nil
		}
		if _, failed := e.podErrs[id]; failed {
			delete(e.podErrs, id)
			e.log.Info("an allowed pod's devices are guarded now: its packets to IMDS pass", zap.String("cgroup", cgroup))
		}
	}
	addrs, err := nl.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if ip.IsGlobalUnicast() || ip.IsPrivate() {
			out = append(out, ip)
		}
	}
	return out
}

// StartTable sets up the nftables layer in the host's network namespace
// (hostNetnsPath, or the daemon's own when ""). A kernel without nf_tables
// gets one warning and the daemon runs with eBPF alone.
func (e *Enforcer) StartTable(hostNetnsPath string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	id, err := netnsexec.ID(hostNetnsPath)
	if err != nil {
		return err
	}
	e.hostNetns = id
	if e.selfNetns, err = netnsexec.ID(""); err != nil {
		return err
	}
	if hostNetnsPath != "" {
		fd, err := unix.Open(hostNetnsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("opening %s: %w", hostNetnsPath, err)
		}
		e.netnsFd = fd
	}
	t := nft.New(e.netnsFd)
	if err := t.Supported(); err != nil {
		e.log.Warn("nftables unavailable: running with the eBPF layer only (packets routed from other namespaces are not covered)", zap.Error(err))
		return nil
	}
	e.table = t
	return e.syncTableLocked()
}

// syncTableLocked makes the table what the plan in force asks for.
func (e *Enforcer) syncTableLocked() error {
	if e.table == nil {
		return nil
	}
	if !*e.plan.Policy.Nftables {
		if e.nftOn {
			e.nftOn = false
			if err := e.table.Remove(); err != nil {
				return err
			}
			e.log.Info("nftables layer off (policy nftables: false): table removed")
		}
		return nil
	}
	cfg, err := nftConfig(e.plan, e.allowedSources())
	if err != nil {
		return err
	}
	if err := e.table.Apply(cfg); err != nil {
		return err
	}
	e.nftCfg, e.nftOn = cfg, true
	e.log.Debug("nftables table written", zap.Int("endpoints", len(cfg.Endpoints)), zap.Int("allowed_sources", len(cfg.Allowed)))
	return nil
}

// updateAllowedLocked follows pods that come and go under allowNonHostNetns rules.
func (e *Enforcer) updateAllowedLocked() {
	now := e.allowedSources()
	var add, remove []netip.Addr
	for _, a := range now {
		if !slices.Contains(e.nftCfg.Allowed, a) {
			add = append(add, a)
		}
	}
	for _, a := range e.nftCfg.Allowed {
		if !slices.Contains(now, a) {
			remove = append(remove, a)
		}
	}
	if len(add)+len(remove) == 0 {
		return
	}
	if err := e.table.SetAllowed(add, remove); err != nil {
		e.log.Warn("updating the nftables allowed sources", zap.Error(err))
		return
	}
	e.nftCfg.Allowed = now
}

// checkTable restores the table if someone deleted or flushed it.
func (e *Enforcer) checkTable() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.nftOn {
		return
	}
	ok, err := e.table.Check(len(e.nftCfg.Endpoints) * nft.RulesPerEndpoint(e.nftCfg))
	if err != nil {
		e.log.Warn("checking the nftables table", zap.Error(err))
		return
	}
	if ok {
		return
	}
	if err := e.table.Apply(e.nftCfg); err != nil {
		e.log.Error("restoring the nftables table", zap.Error(err))
		return
	}
	e.restores++
	e.log.Warn("nftables table inet " + nft.TableName + " was deleted or changed: restored")
	if e.sink != nil {
		e.sink.EmitTable(&events.TableEvent{Time: time.Now(), Result: "restored", Table: "inet " + nft.TableName})
	}
}

// StopTable releases the namespace at daemon exit, and removes the table
// if remove (--on-exit detach); otherwise the table stays, like the pinned
// programs, until the next daemon takes it over or `imdsguard detach`.
func (e *Enforcer) StopTable(remove bool) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	var err error
	if remove && e.table != nil && e.nftOn {
		err = e.table.Remove()
		e.nftOn = false
	}
	if e.netnsFd >= 0 {
		unix.Close(e.netnsFd)
		e.netnsFd = -1
	}
	return err
}

// TableRestores counts restorations of a deleted or flushed table.
func (e *Enforcer) TableRestores() uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.restores
}

// Audit reports whether the policy in force is in audit mode.
func (e *Enforcer) Audit() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.plan.Policy.Mode == policy.ModeAudit
}
