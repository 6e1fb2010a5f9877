package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/cilium/ebpf/rlimit"
	"go.uber.org/zap"

	"github.com/imdsguard/imdsguard/internal/cgroupfs"
	"github.com/imdsguard/imdsguard/internal/controller"
	"github.com/imdsguard/imdsguard/internal/eventreader"
	"github.com/imdsguard/imdsguard/internal/events"
	"github.com/imdsguard/imdsguard/internal/hostnetns"
	"github.com/imdsguard/imdsguard/internal/instance"
	"github.com/imdsguard/imdsguard/internal/loader"
	"github.com/imdsguard/imdsguard/internal/nflog"
	"github.com/imdsguard/imdsguard/internal/nft"
	"github.com/imdsguard/imdsguard/internal/nftlayer"
	"github.com/imdsguard/imdsguard/internal/nodetaint"
	"github.com/imdsguard/imdsguard/internal/ocsf"
	"github.com/imdsguard/imdsguard/internal/output"
	"github.com/imdsguard/imdsguard/internal/pindir"
	"github.com/imdsguard/imdsguard/internal/policy"
	"github.com/imdsguard/imdsguard/internal/uplink"
)

// daemon is the running composition. Each start step that makes
// something pushes how to undo it on the cleanup stack; close runs the
// stack in reverse. Once the guard is loaded every exit path leaves the
// host as --on-exit says: the new enforcement pinned (keep), or nothing at
// all (detach). Never half of it.
type daemon struct {
	cfg      *runConfig
	log      *zap.Logger
	cleanups []func()

	cgroupDir   string
	cgroupMount string
	hostCookie  uint64
	hostInode   uint64 // of the host's network namespace, for the meta
	hostPath    string // a path to it that outlives the daemon, "" if none
	hostname    string
	plan        *controller.Plan
	runtime     podRuntime        // nil without a container runtime to name pods
	taints      *nodetaint.Client // nil without --startup-taint
	node        string

	guard   *loader.Guard
	adopted uint64
	cgroups *eventreader.CgroupResolver // nil when cgroup paths cannot be read
	sink    *output.Pipeline
	table   *nftlayer.Table
	enf     *controller.Controller
	uplinks *uplink.Guard
	folder  *eventreader.Folder
	reader  *eventreader.Reader
}

// onClose pushes a cleanup.
func (d *daemon) onClose(fn func()) { d.cleanups = append(d.cleanups, fn) }

// close undoes the start steps, the last first.
func (d *daemon) close() {
	for i := len(d.cleanups) - 1; i >= 0; i-- {
		d.cleanups[i]()
	}
	d.cleanups = nil
}

// startDaemon builds the daemon step by step. On an error, what was made
// is undone as --on-exit says.
func startDaemon(ctx context.Context, cfg *runConfig, stdout io.Writer, log *zap.Logger) (*daemon, error) {
	d := &daemon{cfg: cfg, log: log}
	d.hostname, _ = os.Hostname() // best effort: empty rather than invented
	steps := []func(context.Context) error{
		d.prepareHost,
		d.loadGuard,
		func(context.Context) error { return d.startOutputs(stdout) },
		func(context.Context) error { return d.startController() },
		func(context.Context) error { return d.startUplinks() },
		func(context.Context) error { d.startTableLog(); return nil },
		d.startReader,
	}
	// Every step runs even when ctx has ended meanwhile: run then shuts
	// the whole daemon down in order, as for a signal after start.
	for _, step := range steps {
		if err := step(ctx); err != nil {
			d.close()
			return nil, err
		}
	}
	return d, nil
}

// prepareHost checks what the guard needs and works out where it goes,
// before anything is made.
func (d *daemon) prepareHost(context.Context) error {
	if err := checkPrivileges(); err != nil {
		return err
	}
	warnDegraded(d.log)
	if err := d.findCgroup(); err != nil {
		return err
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return fmt.Errorf("raising the locked-memory limit for BPF maps: %w", err)
	}
	if err := loader.CheckKernel(); err != nil {
		return err
	}
	var err error
	if d.hostCookie, err = loader.NetnsCookie(d.cfg.hostNetns); err != nil {
		return fmt.Errorf("host network namespace: %w", err)
	}
	if d.hostInode, d.hostPath, err = hostnetns.Describe(d.cfg.hostNetns); err != nil {
		return fmt.Errorf("host network namespace: %w", err)
	}
	d.openRuntime()
	if d.plan, err = controller.MakePlanWithNames(d.cfg.pol, d.cgroupMount, d.runtime); err != nil {
		return err
	}
	return d.prepareTaint()
}

// findCgroup settles the cgroup to guard and the mount its paths are
// relative to (in a container: the host's, mounted in).
func (d *daemon) findCgroup() error {
	var err error
	d.cgroupDir = d.cfg.cgroup
	if d.cgroupDir == "" {
		if d.cgroupDir, err = cgroupfs.V2Mount(); err != nil {
			return err
		}
	} else if err := cgroupfs.IsV2(d.cgroupDir); err != nil {
		return fmt.Errorf("--cgroup: %w", err)
	}
	if d.cgroupMount, err = cgroupfs.MountOf(d.cgroupDir); err != nil {
		return fmt.Errorf("--cgroup: %w", err)
	}
	return nil
}

// prepareTaint refuses to start with a startup taint that could never be
// removed: it would keep the node unschedulable.
func (d *daemon) prepareTaint() error {
	if d.cfg.taint == "" {
		return nil
	}
	var err error
	if d.node, err = nodetaint.NodeName(os.Getenv); err != nil {
		return fmt.Errorf("--startup-taint: %w", err)
	}
	if d.taints, err = nodetaint.InCluster(d.log); err != nil {
		return fmt.Errorf("--startup-taint: %w", err)
	}
	return nil
}

// loadGuard loads and attaches the programs (or takes over pinned ones)
// and adopts the connections opened before.
func (d *daemon) loadGuard(ctx context.Context) error {
	cfg := d.cfg
	guard, err := loader.Load(ctx, &d.plan.Compiled.Tables, loader.Options{
		Cgroup:          d.cgroupDir,
		HostNetnsCookie: d.hostCookie,
		RingBufBytes:    uint32(cfg.ringbuf),
		CgroupRules:     d.plan.Cgroups,
		PinDir:          cfg.pinDir,
		LockWait:        30 * time.Second,
		Meta: pindir.Meta{
			Version:        version,
			Mode:           cfg.pol.Mode,
			Cloud:          cfg.pol.Profile.Name,
			PolicyHash:     d.plan.Hash,
			PolicySource:   cfg.policySource(),
			HostNetns:      cfg.hostNetns,
			HostNetnsInode: d.hostInode,
			HostNetnsPath:  d.hostPath,
		},
	}, d.log)
	if err != nil {
		return err
	}
	d.guard = guard
	d.onClose(func() {
		release := guard.Release
		if cfg.detach() {
			release = guard.Remove
		}
		if err := release(); err != nil {
			d.log.Error("releasing the guard", zap.Error(err))
		}
	})
	// Connections opened before the guard must not become a way around
	// it. A takeover needs none: the pinned programs judged every
	// connection made while no daemon ran.
	if guard.Takeover() == loader.TakeoverNone {
		if d.adopted, err = guard.AdoptConnections(); err != nil {
			return fmt.Errorf("adopting connections opened before start: %w", err)
		}
	}
	return nil
}

// startOutputs opens the cgroup path resolver and the event outputs.
func (d *daemon) startOutputs(stdout io.Writer) error {
	cgroups, err := eventreader.NewCgroupResolver(d.cgroupMount)
	if err != nil {
		d.log.Warn("cgroup paths will be missing from events", zap.Error(err))
	} else {
		d.cgroups = cgroups
		d.onClose(func() { cgroups.Close() })
	}
	cfg := d.cfg
	sink, err := output.New(output.Config{
		Format:   cfg.format,
		Targets:  cfg.outputs,
		SyslogCA: cfg.syslogCA,
		Product:  ocsf.Product{Name: "imdsguard", VendorName: "imdsguard", Version: version, Hostname: d.hostname},
		Hostname: d.hostname,
		Queue:    cfg.queue,
	}, stdout, d.log)
	if err != nil {
		return err
	}
	d.sink = sink
	d.onClose(func() {
		if err := sink.Close(); err != nil {
			d.log.Warn("closing outputs", zap.Error(err))
		}
	})
	return nil
}

// startController puts the nftables layer, then the policy controller that
// tells it what the policy asks of the table, in place; allowed pods get
// the uplink guard on their devices.
func (d *daemon) startController() error {
	pods, err := uplink.NewPods(d.guard.UplinkProgram())
	if err != nil {
		return fmt.Errorf("uplink guard for pods: %w", err)
	}
	if err := d.startTable(pods); err != nil {
		return err
	}
	d.enf = controller.New(d.guard, d.plan, controller.Options{
		PolicyPath:   d.cfg.policy,
		ModeOverride: d.cfg.mode,
		Cloud:        d.cfg.detected.Cloud,
		CgroupMount:  d.cgroupMount,
		Rescan:       500 * time.Millisecond,
		Table:        d.table,
		Names:        d.runtime,
	}, d.sink, d.log)
	if err := d.enf.SyncTable(); err != nil {
		return fmt.Errorf("nftables layer: %w", err)
	}
	return nil
}

// startTable opens the nftables layer in the host's namespace; each
// restore of the table is reported as an event. At exit the table stays,
// or goes with --on-exit detach.
func (d *daemon) startTable(pods *uplink.Pods) error {
	table, err := nftlayer.Start(nftlayer.Options{
		HostNetns:   d.cfg.hostNetns,
		CgroupMount: d.cgroupMount,
		Pods:        pods,
		Restored: func(name string, at time.Time) {
			d.sink.EmitTable(&events.TableEvent{Time: at, Result: "restored", Table: name})
		},
	}, d.log)
	if err != nil {
		return fmt.Errorf("nftables layer: %w", err)
	}
	d.table = table
	d.onClose(func() {
		if err := table.Stop(d.cfg.detach()); err != nil {
			d.log.Error("removing the nftables table", zap.Error(err))
		}
	})
	return nil
}

// startUplinks puts the uplink guard on the devices of the host's
// namespace that packets to the endpoints can leave by.
func (d *daemon) startUplinks() error {
	addrs, err := policy.EndpointAddrs(d.cfg.pol.Endpoints)
	if err != nil {
		return err
	}
	if d.uplinks, err = uplink.Start(d.guard.UplinkProgram(), addrs, d.cfg.hostNetns, d.log); err != nil {
		return fmt.Errorf("uplink guard: %w", err)
	}
	d.onClose(func() {
		detach := d.cfg.detach()
		if err := d.uplinks.Close(detach); err != nil {
			d.log.Error("removing the uplink guard", zap.Error(err))
		}
		if detach {
			if _, err := uplink.RemoveFromPods(d.cfg.hostNetns, d.guard.MapIDs()); err != nil {
				d.log.Error("removing the uplink guard from pods", zap.Error(err))
			}
		}
	})
	return nil
}

// startTableLog reports what the table stops too (in the host's
// namespace); the reader ends when its socket closes.
func (d *daemon) startTableLog() {
	tableLog, err := nflog.Open(nftlayer.LogGroup, d.cfg.hostNetns)
	if err != nil {
		d.log.Warn("not reading the nftables log: packets the table stops are counted but not reported", zap.Error(err))
		return
	}
	d.onClose(func() { tableLog.Close() })
	go nflog.Report(tableLog, nft.LogPrefix, d.enf.Audit, d.sink, d.log)
}

// startReader makes the event reader, with what enriches events: the
// instance id, pod and container names.
func (d *daemon) startReader(ctx context.Context) error {
	if d.cgroups != nil {
		go d.cgroups.Watch(ctx, d.log)
	}
	ropts := eventreader.ReaderOptions{Cgroups: d.cgroups, Rules: d.enf.RuleName, Hostname: d.hostname, InstanceID: d.instanceID(ctx), Names: d.podNames(),
		Cloud: func() string { return d.enf.Plan().Policy.Profile.Name }}
	d.folder = eventreader.NewFolder(d.sink, d.cfg.fold)
	reader, err := eventreader.NewReader(d.guard.Events(), ropts, d.folder, d.log)
	if err != nil {
		return err
	}
	d.reader = reader
	return nil
}

// instanceID is --instance-id, read over IMDSv2 (from the host's network
// namespace, through the guard) for auto.
func (d *daemon) instanceID(ctx context.Context) string {
	if d.cfg.instance != "auto" {
		return d.cfg.instance
	}
	id, err := instance.Fetch(ctx, d.cfg.pol.Endpoints[0], d.cfg.hostNetns)
	if err != nil {
		d.log.Warn("instance id not read; events carry none", zap.Error(err))
		return ""
	}
	return id
}

// podNames asks the container runtime for pod and container names, or
// is nil (--cri-socket none, or no runtime to dial; see openRuntime).
func (d *daemon) podNames() func(string) (eventreader.PodNames, bool) {
	names := d.runtime
	if names == nil {
		return nil
	}
	return func(id string) (eventreader.PodNames, bool) {
		n, ok := names.Lookup(id)
		return eventreader.PodNames{Pod: n.Pod, Namespace: n.Namespace, Container: n.Container, Image: n.Image}, ok
	}
}
