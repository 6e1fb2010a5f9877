package main

import (
	"slices"

	"go.uber.org/zap"

	"github.com/imdsguard/imdsguard/internal/controller"
	"github.com/imdsguard/imdsguard/internal/cri"
	"github.com/imdsguard/imdsguard/internal/policy"
)

// podRuntime is the container runtime (internal/cri's Client or Auto) that
// names pods' containers, for events and for the policy's rules by name.
type podRuntime interface {
	controller.Runtime
	Warm()
	Close() error
}

// openRuntime dials the container runtime --cri-socket names (auto: the
// first default socket there, looked for again until one appears), or
// leaves d.runtime nil (none, or a socket that cannot be dialled). One
// client serves events and the policy, so the two share its cache and a
// container is listed once.
//
// A policy with rules by name still starts without a runtime: those rules
// then judge every pod's container as strictly as they can (no grant by
// name, every deny by name), which takes no protection away; refusing to
// start would leave the node with none at all. The daemon says so.
func (d *daemon) openRuntime() {
	names := slices.ContainsFunc(d.cfg.pol.Rules, func(r policy.Rule) bool { return r.Match.HasNames() })
	switch sock := d.cfg.criSocket; sock {
	case "none":
		if names {
			d.log.Warn(controller.NoRuntimeWarning, zap.String("cri_socket", sock))
		}
		return
	case "auto":
		if names && cri.FindSocket() == "" {
			d.log.Warn("the policy matches pods by name, and no container runtime (CRI) socket is there yet: until one appears, "+
				"grants by namespace, pod or container name do not apply, and denies by name apply to every pod's container",
				zap.Strings("looked_for", cri.DefaultSockets()))
		}
		d.runtime = cri.NewAuto()
	default:
		c, err := cri.Dial(sock)
		if err != nil {
			d.log.Warn("no pod names in events", zap.Error(err))
			if names {
				d.log.Warn(controller.NoRuntimeWarning, zap.String("cri_socket", sock), zap.Error(err))
			}
			return
		}
		d.runtime = c
	}
	rt := d.runtime
	d.onClose(func() { rt.Close() })
	if names {
		// before the plan: the containers running now get their rules by
		// name from the start (a slow runtime's answer arrives by rescans)
		rt.Warm()
	} else {
		go rt.Warm() // the names of the containers running now, before their first event
	}
}
