package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/imdsguard/imdsguard/internal/counters"
	"github.com/imdsguard/imdsguard/internal/hostnetns"
	"github.com/imdsguard/imdsguard/internal/loader"
	"github.com/imdsguard/imdsguard/internal/nft"
	"github.com/imdsguard/imdsguard/internal/pindir"
	"github.com/imdsguard/imdsguard/internal/uplink"
)

// errNotEnforcing makes `status` exit 3 (as LSB status does for "not
// running") when nothing complete is pinned, so scripts need not parse.
var errNotEnforcing = errors.New("not enforcing")

// statusReport is `imdsguard status --json`.
type statusReport struct {
	*loader.Status
	Nftables struct {
		Table   string `json:"table"`
		Present bool   `json:"present"`
		Error   string `json:"error,omitempty"`
	} `json:"nftables"`
	// Uplinks are the devices that carry the uplink guard's filter.
	Uplinks      []string `json:"uplinks"`
	UplinksError string   `json:"uplinks_error,omitempty"`
	// PodDevices are the devices of allowed pods that carry it.
	PodDevices      []string `json:"pod_devices"`
	PodDevicesError string   `json:"pod_devices_error,omitempty"`
	Enforcing       bool     `json:"enforcing"`
	// LastRescanAgeSeconds is how long ago the daemon last scanned the
	// cgroup tree (new cgroups get their rules then); absent if never.
	LastRescanAgeSeconds *float64 `json:"last_rescan_age_seconds,omitempty"`
}

func statusCommand(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	pinDir := fs.String("pin-dir", pindir.Default, "pin directory the daemon was run with")
	asJSON := fs.Bool("json", false, "print one JSON object (for scripts)")
	hostNetns := fs.String("host-netns", "", "network namespace holding the nftables table (default: the one the daemon recorded, else this process's)")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	st, err := loader.ReadStatus(*pinDir)
	if err != nil {
		return err
	}
	r := statusReport{Status: st}
	if st.Meta != nil && !st.Meta.LastRescanAt.IsZero() {
		age := time.Since(st.Meta.LastRescanAt).Seconds()
		r.LastRescanAgeSeconds = &age
	}
	readLayers(&r, *pinDir, *hostNetns)
	r.Enforcing = st.Pinned && st.Complete
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(r); err != nil {
			return err
		}
	} else {
		printStatus(stdout, &r)
	}
	if !r.Enforcing {
		return errNotEnforcing
	}
	return nil
}

// hostNetnsOf returns the network namespace that holds the table and the
// uplink guard ("" for this process's): the --host-netns flag when given,
// else the daemon's, found from here by what it recorded (a
// *hostnetns.UnreachableError when no path leads there).
func hostNetnsOf(flagValue string, meta *pindir.Meta) (string, error) {
	if flagValue != "" {
		return flagValue, nil
	}
	if meta == nil {
		return "", nil
	}
	return hostnetns.Find(hostnetns.Record{Cookie: meta.HostNetnsCookie, Inode: meta.HostNetnsInode, Path: meta.HostNetnsPath, Given: meta.HostNetns})
}

// withTable opens the table in the namespace at path ("" for this
// process's) and runs fn on it.
func withTable(path string, fn func(*nft.Table) error) error {
	fd := -1
	if path != "" {
		var err error
		if fd, err = unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
			return fmt.Errorf("opening network namespace %s: %w", path, err)
		}
		defer unix.Close(fd)
	}
	return fn(nft.New(fd))
}

func tableExists(netns string) (bool, error) {
	var ok bool
	err := withTable(netns, func(t *nft.Table) error {
		var err error
		ok, err = t.Exists()
		return err
	})
	return ok, err
}

// readLayers fills in the table and the uplink guard's filters, looked
// for in the daemon's network namespace.
func readLayers(r *statusReport, pinDir, netnsFlag string) {
	r.Nftables.Table = "inet " + nft.TableName
	netns, err := hostNetnsOf(netnsFlag, r.Meta)
	if err != nil {
		r.Nftables.Error = err.Error()
		r.UplinksError = "in the same network namespace as the table"
	} else {
		r.Nftables.Present, err = tableExists(netns)
		if err != nil {
			r.Nftables.Error = err.Error()
		}
		if r.Uplinks, err = uplink.Attached(netns); err != nil {
			r.UplinksError = err.Error()
		}
	}
	maps, err := loader.PinnedMapIDs(pinDir)
	if err == nil && len(maps) > 0 {
		r.PodDevices, err = uplink.AttachedInPods(netns, maps)
	}
	if err != nil {
		r.PodDevicesError = err.Error()
	}
}

func printStatus(w io.Writer, r *statusReport) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	defer tw.Flush()
	line := func(k, format string, a ...any) { fmt.Fprintf(tw, "%s:\t%s\n", k, fmt.Sprintf(format, a...)) }
	printEnforcement(line, r)
	printHooks(line, r)
	printLayers(line, r)
	if c := r.Counters; c != nil {
		printCounters(tw, line, c)
	}
}

type statusLine func(k, format string, a ...any)

// printEnforcement: what is pinned, by which daemon, with which policy.
func printEnforcement(line statusLine, r *statusReport) {
	switch {
	case r.Enforcing:
		line("enforcement", "pinned in %s", r.PinDir)
	case r.Pinned:
		line("enforcement", "INCOMPLETE in %s (a takeover was cut short: the next daemon replaces it; `imdsguard detach` removes it)", r.PinDir)
	default:
		line("enforcement", "none (nothing pinned in %s)", r.PinDir)
	}
	switch {
	case r.Daemon.Running:
		line("daemon", "running (pid %d)", r.Daemon.PID)
	case r.Pinned:
		line("daemon", "not running (the kernel keeps enforcing the last policy; events are counted, not reported)")
	default:
		line("daemon", "not running")
	}
	m := r.Meta
	if m == nil {
		return
	}
	line("version", "%s (layout %s)", m.Version, m.Layout)
	line("mode", "%s", m.Mode)
	if m.Cloud != "" {
		line("cloud", "%s (the policy's profile: docs/clouds.md)", m.Cloud)
	}
	line("policy", "%s from %s, loaded %s (generation %d)", m.PolicyHash, m.PolicySource, m.PolicyLoadedAt.Format(time.RFC3339), m.Generation)
	if r.LastRescanAgeSeconds != nil {
		line("cgroup tree", "checked %.1fs ago (new cgroups get their rules as they are made)", *r.LastRescanAgeSeconds)
	}
	line("cgroup", "%s (id %d)", m.Cgroup, m.CgroupID)
	line("started", "%s by pid %d", m.StartedAt.Format(time.RFC3339), m.PID)
}

func printHooks(line statusLine, r *statusReport) {
	var hooks []string
	for _, h := range r.Hooks {
		if h.Attached {
			hooks = append(hooks, fmt.Sprintf("%s (prog %d)", h.Hook, h.ProgramID))
		} else {
			hooks = append(hooks, h.Hook+" (NOT attached)")
		}
	}
	line("hooks", "%s", strings.Join(hooks, ", "))
	if r.RetiredSocketMaps > 0 {
		line("retired", "%d socket map(s) of an earlier layout still judging connections opened before the last takeover", r.RetiredSocketMaps)
	}
}

// printLayers: the nftables table and the uplink guard's filters.
func printLayers(line statusLine, r *statusReport) {
	switch {
	case r.Nftables.Error != "":
		line("nftables", "unknown: %s", r.Nftables.Error)
	case r.Nftables.Present:
		line("nftables", "table %s present", r.Nftables.Table)
	default:
		line("nftables", "table %s absent", r.Nftables.Table)
	}
	printDevices(line, "uplinks", r.Uplinks, r.UplinksError, "none guarded")
	printDevices(line, "pods", r.PodDevices, r.PodDevicesError, "no allowed pod guarded")
}

func printDevices(line statusLine, key string, devices []string, problem, none string) {
	switch {
	case problem != "":
		line(key, "unknown: %s", problem)
	case len(devices) > 0:
		line(key, "guarded: %s", strings.Join(devices, ", "))
	default:
		line(key, "%s", none)
	}
}

func printCounters(tw io.Writer, line statusLine, c *counters.View) {
	keys := make([]string, 0, len(c.Verdicts))
	for k := range c.Verdicts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	line("counters", "%d verdict kinds, %d events lost, %d unguarded connections", len(keys), c.EventsLost, c.Unguarded)
	for _, k := range keys {
		fmt.Fprintf(tw, "  %s\t%d\n", k, c.Verdicts[k])
	}
	for _, a := range []string{"allow", "deny", "audit"} {
		if n := c.CredentialAccess[a]; n > 0 {
			fmt.Fprintf(tw, "  credential_access_%s\t%d\n", a, n)
		}
	}
}

func detachCommand(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("detach", flag.ContinueOnError)
	pinDir := fs.String("pin-dir", pindir.Default, "pin directory the daemon was run with")
	hostNetns := fs.String("host-netns", "", "network namespace holding the nftables table (default: the one the daemon recorded, else this process's)")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if err := checkPrivileges(); err != nil {
		return err
	}
	st, err := loader.ReadStatus(*pinDir)
	if err != nil {
		return err
	}
	if st.Daemon.Running {
		return fmt.Errorf("imdsguard (pid %d) is running and holds %s: stop it first (systemctl stop imdsguard, or delete the pod); it would go on enforcing through its own descriptors", st.Daemon.PID, *pinDir)
	}
	// Where the table is, found before anything is removed: the record
	// that leads there goes with the pins.
	netns, err := hostNetnsOf(*hostNetns, st.Meta)
	var unreachable *hostnetns.UnreachableError
	if err != nil && !errors.As(err, &unreachable) {
		return err
	}
	removed, err := detachAll(*pinDir, netns, unreachable == nil)
	for _, r := range removed {
		fmt.Fprintf(stdout, "removed %s\n", r)
	}
	if err != nil {
		return err
	}
	if unreachable != nil {
		// The hooks are gone, so nothing is judged any more, but the
		// table still drops forwarded pod traffic to IMDS: scripts must
		// notice.
		return fmt.Errorf("the hooks and pins are removed, the table is not: %w", unreachable)
	}
	if len(removed) == 0 {
		fmt.Fprintln(stdout, "nothing to remove: imdsguard is not attached")
	}
	return nil
}

// detachAll removes the pins and hooks, the filters on pods' devices
// and, with inHost, the table and the uplink guard in the namespace at
// netns ("" for this process's). It names what it removed.
func detachAll(pinDir, netns string, inHost bool) (removed []string, err error) {
	maps, err := loader.PinnedMapIDs(pinDir)
	if err != nil {
		return nil, fmt.Errorf("reading the pinned maps: %w", err)
	}
	if removed, err = loader.RemovePinned(pinDir, zap.NewNop()); err != nil {
		return removed, fmt.Errorf("detaching: %w", err)
	}
	if inHost {
		tableErr := withTable(netns, func(t *nft.Table) error {
			ok, err := t.Exists()
			if err != nil || !ok {
				return err
			}
			if err := t.Remove(); err != nil {
				return err
			}
			removed = append(removed, "nftables table inet "+nft.TableName)
			return nil
		})
		if tableErr != nil && !errors.Is(tableErr, os.ErrNotExist) {
			return removed, fmt.Errorf("removing the nftables table: %w", tableErr)
		}
		devices, err := uplink.Remove(netns)
		for _, d := range devices {
			removed = append(removed, "uplink guard on "+d)
		}
		if err != nil {
			return removed, fmt.Errorf("removing the uplink guard: %w", err)
		}
	}
	if len(maps) > 0 {
		devices, err := uplink.RemoveFromPods(netns, maps)
		for _, d := range devices {
			removed = append(removed, "uplink guard on "+d)
		}
		if err != nil {
			return removed, fmt.Errorf("removing the uplink guard from pods: %w", err)
		}
	}
	return removed, nil
}
