package controller

import (
	"slices"

	"go.uber.org/zap"

	"github.com/imdsguard/imdsguard/internal/loader"
	"github.com/imdsguard/imdsguard/internal/nftlayer"
	"github.com/imdsguard/imdsguard/internal/policy"
)

// Table is the nftables layer (internal/nftlayer.Table) as the policy
// controller sees it: the controller says what the policy in force asks
// for; writing, restoring and removing the table, and finding the pods'
// addresses, are the layer's.
type Table interface {
	// Sync writes the table anew as want says, or removes it: at start
	// and at every reload.
	Sync(want nftlayer.Want) error
	// FollowPods follows the pods in the allowed cgroups as they come and
	// go, at every rescan: only the addresses let through change.
	FollowPods(allowedCgroups []string) error
}

// tableWant is what plan asks of the nftables layer.
func tableWant(p *Plan) (nftlayer.Want, error) {
	if !*p.Policy.Nftables {
		return nftlayer.Want{}, nil
	}
	endpoints, err := policy.ParseEndpoints(p.Policy.Endpoints)
	if err != nil {
		return nftlayer.Want{}, err
	}
	return nftlayer.Want{
		On:             true,
		Reject:         p.Policy.NftablesAction == policy.NftablesReject,
		Audit:          p.Policy.Mode == policy.ModeAudit,
		Endpoints:      endpoints,
		AllowedCgroups: p.allowedCgroups(),
	}, nil
}

// allowedCgroups are the known cgroups whose rule list has a rule with
// allowNonHostNetns, sorted: the pods the policy lets reach IMDS from their
// own network namespaces, which the table must let through. The list is the
// one the kernel judges the cgroup's sockets by, so a grant by name counts
// only once the runtime has named the pod, and not past a deny that comes
// first for every process of the cgroup.
func (p *Plan) allowedCgroups() []string {
	if !slices.ContainsFunc(p.Policy.Rules, func(r policy.Rule) bool { return r.AllowNonHostNetns && !r.Deny }) {
		return nil
	}
	var out []string
	for id, path := range p.tree {
		if slices.ContainsFunc(p.Cgroups[loader.CgroupKey{ID: id}], p.Compiled.AllowsNonHostNetns) {
			out = append(out, path)
		}
	}
	slices.Sort(out)
	return out
}

// SyncTable puts in place the table the plan in force asks for. The
// daemon calls it once at start, where a failure is fatal; reloads sync
// the table themselves.
func (e *Controller) SyncTable() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.syncTableLocked()
}

func (e *Controller) syncTableLocked() error {
	if e.opts.Table == nil {
		return nil
	}
	want, err := tableWant(e.plan)
	if err != nil {
		return err
	}
	return e.opts.Table.Sync(want)
}

// followPodsLocked hands the table the allowed cgroups of the tree just
// scanned: pods come and go without a reload.
func (e *Controller) followPodsLocked() {
	if e.opts.Table == nil || !*e.plan.Policy.Nftables {
		return // no table, no pods to let through it
	}
	if err := e.opts.Table.FollowPods(e.plan.allowedCgroups()); err != nil {
		e.log.Warn("updating the nftables allowed sources", zap.Error(err))
	}
}
