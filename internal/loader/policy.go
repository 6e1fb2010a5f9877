package loader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
	"go.uber.org/zap"

	"github.com/imdsguard/imdsguard/bpf"
	"github.com/imdsguard/imdsguard/internal/kernelpolicy"
)

// maxRules is the size of one generation of the rules table.
const maxRules = uint32(bpf.MaxRules)

// CgroupKey names a rule list: a cgroup's own, or (Subtree) the one for the
// cgroups below it that have no entry of their own yet.
type CgroupKey struct {
	ID      uint64
	Subtree bool
}

// CgroupRules maps rule lists to the indices of the rules that can apply to
// their processes, in policy order. {0, false} holds the list for every
// cgroup without an entry and below no cgroup with a subtree entry.
type CgroupRules map[CgroupKey][]uint16

func (k CgroupKey) kernel(gen uint32) bpf.ImdsguardCgroupKey {
	key := bpf.ImdsguardCgroupKey{CgroupId: k.ID, Gen: gen}
	if k.Subtree {
		key.Subtree = 1
	}
	return key
}

func ruleList(idx []uint16) (bpf.ImdsguardRuleList, error) {
	var l bpf.ImdsguardRuleList
	if len(idx) > len(l.Idx) {
		return l, fmt.Errorf("%d rules for one cgroup, at most %d", len(idx), len(l.Idx))
	}
	l.N = uint32(len(idx))
	copy(l.Idx[:], idx)
	return l, nil
}

// writePolicy writes a whole policy into generation gen, which no program
// reads while this runs.
func (g *Guard) writePolicy(gen uint32, pol *kernelpolicy.Tables, cg CgroupRules) error {
	cfg := pol.Config
	cfg.HostNetnsCookie = g.hostCookie
	cfg.ScopeCgroupId = g.meta.CgroupID
	cfg.ScopeLevel = g.scopeLevel
	if err := g.objs.ConfigMap.Update(gen, &cfg, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("writing config: %w", err)
	}
	for i, k := range pol.Endpoints {
		k.Gen = uint16(gen)
		v := bpf.ImdsguardEndpointValue{Id: uint32(i)}
		if err := g.objs.Endpoints.Update(&k, &v, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("writing endpoints: %w", err)
		}
	}
	if len(pol.Rules) > int(maxRules) {
		return fmt.Errorf("writing rules: %d rules, at most %d", len(pol.Rules), maxRules)
	}
	for i, r := range pol.Rules {
		if err := g.objs.Rules.Update(gen*maxRules+uint32(i), &r, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("writing rules: %w", err)
		}
	}
	overflow := kernelpolicy.OverflowRuleEntry()
	if err := g.objs.Rules.Update(gen*maxRules+uint32(kernelpolicy.OverflowRule), &overflow, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("writing rules: %w", err)
	}
	for id, idx := range cg {
		if err := g.putCgroupRules(gen, id, idx); err != nil {
			return err
		}
	}
	return nil
}

func (g *Guard) putCgroupRules(gen uint32, k CgroupKey, idx []uint16) error {
	l, err := ruleList(idx)
	if err != nil {
		return fmt.Errorf("cgroup %d: %w", k.ID, err)
	}
	key := k.kernel(gen)
	if err := g.objs.CgroupRules.Update(&key, &l, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("writing rules of cgroup %d: %w", k.ID, err)
	}
	return nil
}

// clearGeneration removes generation gen's endpoints and cgroup entries (the
// config slot and rule table are overwritten in place by the next write).
func (g *Guard) clearGeneration(gen uint32) error {
	var errs []error
	var ek bpf.ImdsguardEndpointKey
	var ev bpf.ImdsguardEndpointValue
	var stale []bpf.ImdsguardEndpointKey
	it := g.objs.Endpoints.Iterate()
	for it.Next(&ek, &ev) {
		if uint32(ek.Gen) == gen {
			stale = append(stale, ek)
		}
	}
	errs = append(errs, it.Err())
	for _, k := range stale {
		if err := g.objs.Endpoints.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	var ck bpf.ImdsguardCgroupKey
	var cl bpf.ImdsguardRuleList
	var staleCg []bpf.ImdsguardCgroupKey
	cit := g.objs.CgroupRules.Iterate()
	for cit.Next(&ck, &cl) {
		if ck.Gen == gen {
			staleCg = append(staleCg, ck)
		}
	}
	errs = append(errs, cit.Err())
	for _, k := range staleCg {
		if err := g.objs.CgroupRules.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("clearing policy generation %d: %w", gen, err)
	}
	return nil
}

// Apply puts a new policy in force atomically. It is written into the
// generation no program reads, then one map update switches every program
// to it; a program that started before the switch finishes with the old
// generation, never a mix. The old generation is removed only once the
// kernel has waited for every program that could still read it. If
// anything fails before the switch, the old policy stays in force untouched.
func (g *Guard) Apply(pol *kernelpolicy.Tables, cg CgroupRules) error {
	next := 1 - g.gen
	// The inactive generation is normally empty; a failed Apply may have
	// left part of a policy there.
	if err := g.clearGeneration(next); err != nil {
		return err
	}
	if err := g.writePolicy(next, pol, cg); err != nil {
		if cerr := g.clearGeneration(next); cerr != nil {
			g.log.Warn("cleaning up a failed policy write", zap.Error(cerr))
		}
		return err
	}
	// The connect hooks' port shortcut must let the new endpoints through
	// before they are in force.
	if err := g.syncPortSkip(); err != nil {
		if cerr := g.clearGeneration(next); cerr != nil {
			g.log.Warn("cleaning up a failed policy write", zap.Error(cerr))
		}
		return err
	}
	if err := g.objs.PolicyGen.Update(uint32(0), next, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("switching policy generation: %w", err)
	}
	old := g.gen
	g.gen = next
	start := time.Now()
	if err := g.waitForPrograms(); err != nil {
		// Still consistent: the old generation just stays in the maps.
		g.log.Warn("old policy left in place", zap.Error(err))
		return nil
	}
	if err := g.clearGeneration(old); err != nil {
		g.log.Warn("clearing the old policy", zap.Error(err))
	} else if err := g.syncPortSkip(); err != nil {
		// Still safe: the shortcut skips fewer ports than it could.
		g.log.Warn("narrowing the connect hooks' port shortcut", zap.Error(err))
	}
	g.log.Debug("policy switched", zap.Uint32("generation", next), zap.Duration("grace", time.Since(start)))
	return nil
}

// SetCgroupRules updates the rule lists of cgroups created or removed since
// the policy was applied, in the generation in force. Each entry changes
// atomically; a cgroup's processes get its rules from then on.
func (g *Guard) SetCgroupRules(set CgroupRules, remove []CgroupKey) error {
	var errs []error
	for k, idx := range set {
		errs = append(errs, g.putCgroupRules(g.gen, k, idx))
	}
	for _, k := range remove {
		key := k.kernel(g.gen)
		if err := g.objs.CgroupRules.Delete(&key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("removing rules of cgroup %d: %w", k.ID, err))
		}
	}
	return errors.Join(errs...)
}

// ForgetCgroupConnections removes the open-connection counts of cgroups
// that are gone, once they hold none, so that the kernel's table (which
// refuses newcomers when full) keeps room on nodes where pods come and go.
func (g *Guard) ForgetCgroupConnections(ids []uint64) error {
	var errs []error
	for _, id := range ids {
		key := bpf.ImdsguardConnKey{Id: id} // scope 0: a cgroup
		var n int64
		if err := g.objs.OpenConns.Lookup(&key, &n); err != nil || n != 0 {
			continue // never connected, or sockets of it still open
		}
		if err := g.objs.OpenConns.Delete(&key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("forgetting the connections of cgroup %d: %w", id, err))
		}
	}
	return errors.Join(errs...)
}

// Generation is the policy generation in force (events name it).
func (g *Guard) Generation() uint32 { return g.gen }

// waitForPrograms returns once every BPF program that was running when it
// was called has finished. Updating an element of a map-of-maps makes the
// kernel wait for an RCU grace period before the syscall returns
// (maybe_wait_bpf_programs), which is exactly that wait.
func (g *Guard) waitForPrograms() error {
	inner, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		return fmt.Errorf("creating barrier map: %w", err)
	}
	defer inner.Close()
	outer, err := ebpf.NewMap(&ebpf.MapSpec{
		Type: ebpf.ArrayOfMaps, KeySize: 4, ValueSize: 4, MaxEntries: 1,
		InnerMap: &ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1},
	})
	if err != nil {
		return fmt.Errorf("creating barrier map: %w", err)
	}
	defer outer.Close()
	if err := outer.Update(uint32(0), inner, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("waiting for running programs: %w", err)
	}
	return nil
}

// syncPortSkip sets the ports the connect hooks may skip at once: those of
// no endpoint in the endpoints map, of either generation (bits port % 64).
// It only ever skips ports no entry uses, so calling it after adding a
// generation and after removing one keeps the shortcut safe throughout.
func (g *Guard) syncPortSkip() error {
	var used uint64
	var k bpf.ImdsguardEndpointKey
	var v bpf.ImdsguardEndpointValue
	it := g.objs.Endpoints.Iterate()
	for it.Next(&k, &v) {
		used |= 1 << (portOf(k.Port) & 63)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("reading endpoints: %w", err)
	}
	if err := g.objs.PortSkip.Update(uint32(0), ^used, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("writing the port shortcut: %w", err)
	}
	return nil
}

// portOf turns a key's port (network byte order in memory) into a number.
func portOf(p uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], p)
	return binary.BigEndian.Uint16(b[:])
}
