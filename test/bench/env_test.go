package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/imdsguard/imdsguard/internal/cloud"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/imdsguard/imdsguard/bpf"
	"github.com/imdsguard/imdsguard/internal/controller"
	"github.com/imdsguard/imdsguard/internal/counters"
	"github.com/imdsguard/imdsguard/internal/loader"
	"github.com/imdsguard/imdsguard/internal/policy"
	"github.com/imdsguard/imdsguard/test/daemon"
	"github.com/imdsguard/imdsguard/test/imdsserver"
	"github.com/imdsguard/imdsguard/test/lab"
)

// clientResult is benchclient's output (see test/benchclient).
type clientResult struct {
	Samples  []int64        `json:"samples"`
	Count    int64          `json:"count"`
	Seconds  float64        `json:"seconds"`
	Outcomes map[string]int `json:"outcomes"`
}

// runClient runs benchclient in namespace ns and inside the lab cgroup (the
// guarded one), and returns what it measured.
func runClient(b *testing.B, l *lab.Lab, ns lab.NS, args ...string) clientResult {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := l.Command(ctx, ns, binary(b, pkgClient), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		b.Fatalf("benchclient %v in %s: %v: %s", args, ns, err, stderr.String())
	}
	var r clientResult
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		b.Fatalf("benchclient %v: %v: %q", args, err, stdout.String())
	}
	return r
}

// serveIMDS starts the test IMDS server on both IMDS endpoints.
func serveIMDS(b *testing.B, l *lab.Lab) *imdsserver.Server {
	b.Helper()
	srv := imdsserver.New(imdsserver.Options{})
	for _, a := range []struct{ network, addr string }{
		{"tcp4", net.JoinHostPort(lab.IMDSv4, "80")},
		{"tcp6", net.JoinHostPort(lab.IMDSv6, "80")},
	} {
		ln, err := l.Listen(lab.IMDS, a.network, a.addr)
		if err != nil {
			b.Fatal(err)
		}
		go srv.Serve(ln)
	}
	b.Cleanup(func() { srv.Close() })
	return srv
}

// listen opens a listener in ns and serves every connection with handle.
func listen(b *testing.B, l *lab.Lab, ns lab.NS, network, addr string, handle func(net.Conn)) string {
	b.Helper()
	ln, err := l.Listen(ns, network, addr)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
	return ln.Addr().String()
}

// closeAtOnce serves connection-rate clients: accept, close.
func closeAtOnce(c net.Conn) { c.Close() }

// sinkAndAck serves bulk clients: read everything, then answer one byte.
func sinkAndAck(c net.Conn) {
	defer c.Close()
	if _, err := io.Copy(io.Discard, c); err == nil {
		c.Write([]byte{1})
	}
}

// discard reads and drops everything (the flood's IMDS stand-in: the judge
// looks only at what the client writes).
func discard(c net.Conn) {
	defer c.Close()
	io.Copy(io.Discard, c)
}

// guardDaemon is a running imdsguard with what the bench reads about it.
type guardDaemon struct {
	*daemon.Daemon
	pid     int
	startup time.Duration // exec to the "enforcing" log line
}

// startGuard starts `imdsguard run` on the lab (default policy, enforce,
// events to /dev/null).
func startGuard(b *testing.B, l *lab.Lab, args ...string) *guardDaemon {
	b.Helper()
	bin := binary(b, pkgGuard) // the first call builds it: not part of the start-up
	start := time.Now()
	d := daemon.StartDiscardingEvents(b, bin, l, args...)
	return &guardDaemon{Daemon: d, pid: d.PID(), startup: time.Since(start)}
}

// stop stops the daemon and fails the benchmark on a non-zero exit.
func (g *guardDaemon) stop(b *testing.B) {
	b.Helper()
	if code := g.Stop(); code != 0 {
		b.Fatalf("imdsguard exited %d; stderr:\n%s", code, g.Stderr())
	}
}

// loadPrograms attaches imdsguard's programs with the default policy from
// this process, without the daemon: its ring buffer is drained and
// discarded as fast as possible. Against the daemon, it tells the kernel's
// share of a cost from the daemon's (event enrichment, output). It returns
// a function that detaches everything and the guard, for its counters.
func loadPrograms(b *testing.B, l *lab.Lab) (func(), *loader.Guard) {
	b.Helper()
	pol, err := policy.LoadOrDefault("", "", cloud.AWS)
	if err != nil {
		b.Fatal(err)
	}
	plan, err := controller.MakePlan(pol, l.CgroupMount)
	if err != nil {
		b.Fatal(err)
	}
	cookie, err := loader.NetnsCookie(l.NetnsPath(lab.Node))
	if err != nil {
		b.Fatal(err)
	}
	g, err := loader.Load(context.Background(), &plan.Compiled.Tables, loader.Options{Cgroup: l.Cgroup, HostNetnsCookie: cookie, CgroupRules: plan.Cgroups}, zap.NewNop())
	if err != nil {
		b.Fatalf("loading imdsguard's programs: %v", err)
	}
	rd, err := ringbuf.NewReader(g.Events())
	if err != nil {
		g.Remove()
		b.Fatal(err)
	}
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		for {
			if _, err := rd.Read(); err != nil {
				return
			}
		}
	}()
	done := false
	stop := func() {
		if done {
			return
		}
		done = true
		rd.Close()
		<-drained
		if err := g.Remove(); err != nil {
			b.Errorf("detaching imdsguard's programs: %v", err)
		}
	}
	b.Cleanup(stop)
	return stop, g
}

// refusals lists the request verdicts other than allow, by reason, that a
// guard's counters gained between two readings.
func refusals(before, after counters.Totals) map[string]int {
	out := map[string]int{}
	for _, v := range after.Verdicts() {
		if v.Kind != bpf.KindRequest || v.Action == bpf.ActionAllow {
			continue
		}
		if d := v.Count - before.Get(v.Kind, v.Action, v.Reason); d > 0 {
			out["kernel "+v.Action.String()+" "+v.Reason.String()] += int(d)
		}
	}
	return out
}

type procStat struct {
	utime, stime uint64 // clock ticks
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	s := string(b)
	end := strings.LastIndexByte(s, ')') // comm may hold anything
	if end < 0 {
		return procStat{}, errors.New("bad stat")
	}
	f := strings.Fields(s[end+1:])
	// f[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
	if len(f) < 13 {
		return procStat{}, errors.New("short stat")
	}
	var st procStat
	st.utime, _ = strconv.ParseUint(f[11], 10, 64)
	st.stime, _ = strconv.ParseUint(f[12], 10, 64)
	return st, nil
}

// clockTick is USER_HZ, the unit of utime and stime: 100 on every Linux
// architecture the daemon supports.
const clockTick = 100

// cpuSeconds is the process's user+system CPU time so far.
func cpuSeconds(pid int) float64 {
	st, err := readStat(pid)
	if err != nil {
		return 0
	}
	return float64(st.utime+st.stime) / clockTick
}

// statusKB reads a "Vm…:  N kB" line of /proc/PID/status.
func statusKB(pid int, key string) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), key+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

// bpfObject is one BPF program or map a process holds, from its fdinfo.
type bpfObject struct {
	id      uint32
	memlock int64
}

// bpfObjects lists the programs and maps pid holds open (deduplicated by
// id): exactly the daemon's own, whatever else runs on the machine.
func bpfObjects(pid int) (progs, maps map[uint32]bpfObject, err error) {
	dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, err
	}
	progs, maps = map[uint32]bpfObject{}, map[uint32]bpfObject{}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		var o bpfObject
		var isProg, isMap bool
		for _, line := range strings.Split(string(data), "\n") {
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			v = strings.TrimSpace(v)
			switch k {
			case "prog_id":
				isProg = true
				n, _ := strconv.ParseUint(v, 10, 32)
				o.id = uint32(n)
			case "map_id":
				isMap = true
				n, _ := strconv.ParseUint(v, 10, 32)
				o.id = uint32(n)
			case "memlock":
				o.memlock, _ = strconv.ParseInt(v, 10, 64)
			}
		}
		switch {
		case isProg && o.id != 0:
			progs[o.id] = o
		case isMap && o.id != 0:
			maps[o.id] = o
		}
	}
	return progs, maps, nil
}

// progStat is a program's cumulative kernel statistics.
type progStat struct {
	runs uint64
	ns   uint64
}

// programStats reads the statistics of the daemon's programs, by name.
func programStats(pid int) (map[string]progStat, error) {
	progs, _, err := bpfObjects(pid)
	if err != nil {
		return nil, err
	}
	out := map[string]progStat{}
	for id := range progs {
		p, err := ebpf.NewProgramFromID(ebpf.ProgramID(id))
		if err != nil {
			continue
		}
		info, ierr := p.Info()
		st, serr := p.Stats()
		p.Close()
		if ierr != nil || serr != nil {
			continue
		}
		v := out[info.Name]
		out[info.Name] = progStat{v.runs + st.RunCount, v.ns + uint64(st.Runtime)}
	}
	return out, nil
}

// statsDelta is after minus before, per program.
func statsDelta(before, after map[string]progStat) map[string]progStat {
	out := map[string]progStat{}
	for name, a := range after {
		bv := before[name]
		out[name] = progStat{a.runs - bv.runs, a.ns - bv.ns}
	}
	return out
}

// daemonCounters reads the daemon's verdict counters map (found through
// its fds, so it is this daemon's, not another test's).
func daemonCounters(pid int) (counters.Totals, error) {
	_, maps, err := bpfObjects(pid)
	if err != nil {
		return counters.Totals{}, err
	}
	for id := range maps {
		m, err := ebpf.NewMapFromID(ebpf.MapID(id))
		if err != nil {
			continue
		}
		info, err := m.Info()
		if err != nil || info.Name != "counters" {
			m.Close()
			continue
		}
		c, err := counters.Read(m)
		m.Close()
		return c, err
	}
	return counters.Totals{}, errors.New("the daemon's counters map not found")
}

// mapMemory lists the daemon's maps with the memory the kernel charges
// for each (memlock), by name.
func mapMemory(pid int) (map[string]int64, error) {
	_, maps, err := bpfObjects(pid)
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for id, o := range maps {
		name := fmt.Sprintf("map %d", id)
		if m, err := ebpf.NewMapFromID(ebpf.MapID(id)); err == nil {
			if info, err := m.Info(); err == nil && info.Name != "" {
				name = info.Name
			}
			m.Close()
		}
		out[name] += o.memlock
	}
	return out, nil
}

// Pod-block table: what a Calico or Cilium network policy that denies pods
// egress to 169.254.169.254/32 amounts to on the node — a packet filter on
// the pods' forwarded traffic. It sees addresses, not processes or tokens.
const podBlockTable = "bench_podblock"

// addPodBlock installs the table in the lab's node namespace; the returned
// function removes it. reject answers with a TCP reset instead of dropping.
func addPodBlock(b *testing.B, l *lab.Lab, reject bool) func() {
	b.Helper()
	fd, err := netns.GetFromPath(l.NetnsPath(lab.Node))
	if err != nil {
		b.Fatal(err)
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(fd)))
	if err != nil {
		fd.Close()
		b.Fatal(err)
	}
	tbl := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: podBlockTable})
	accept := nftables.ChainPolicyAccept
	chain := c.AddChain(&nftables.Chain{
		Name: "forward", Table: tbl, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept,
	})
	final := expr.Any(&expr.Verdict{Kind: expr.VerdictDrop})
	if reject {
		final = &expr.Reject{Type: unix.NFT_REJECT_TCP_RST}
	}
	for _, r := range []struct {
		proto          byte
		saddrOff, dOff uint32
		src, dst       net.IP
		mask           net.IPMask
	}{
		{unix.NFPROTO_IPV4, 12, 16, net.ParseIP(lab.PodV4).To4(), net.ParseIP(lab.IMDSv4).To4(), net.CIDRMask(24, 32)},
		{unix.NFPROTO_IPV6, 8, 24, net.ParseIP(lab.PodV6), net.ParseIP(lab.IMDSv6), net.CIDRMask(64, 128)},
	} {
		n := uint32(len(r.dst))
		src := r.src.Mask(r.mask)
		c.AddRule(&nftables.Rule{Table: tbl, Chain: chain, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{r.proto}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: r.saddrOff, Len: n},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: n, Mask: r.mask, Xor: make([]byte, n)},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: src},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: r.dOff, Len: n},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: r.dst},
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(80)},
			&expr.Counter{},
			final,
		}})
	}
	if err := c.Flush(); err != nil {
		fd.Close()
		b.Fatalf("adding the pod-block nftables table: %v", err)
	}
	removed := false
	remove := func() {
		if removed {
			return
		}
		removed = true
		defer fd.Close()
		c.DelTable(tbl)
		if err := c.Flush(); err != nil {
			b.Errorf("removing the pod-block nftables table: %v", err)
		}
	}
	// Also on failure (the lab's namespace goes anyway, but say what we made).
	b.Cleanup(remove)
	return remove
}

// startProxy runs benchproxy in the node namespace (inside the lab
// cgroup), forwarding to the lab's IMDS; it returns the proxy's address.
func startProxy(b *testing.B, l *lab.Lab) string {
	b.Helper()
	const addr = "127.0.0.1:8080"
	cmd := l.Command(context.Background(), lab.Node, binary(b, pkgProxy), "-listen", addr, "-upstream", "http://"+net.JoinHostPort(lab.IMDSv4, "80"))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		cmd.Process.Kill() // by pid: the proxy this benchmark started
		cmd.Wait()
	})
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err == nil && strings.TrimSpace(line) != "ready" {
			err = fmt.Errorf("unexpected %q", line)
		}
		ready <- err
		io.Copy(io.Discard, stdout)
	}()
	select {
	case err := <-ready:
		if err != nil {
			b.Fatalf("benchproxy: %v: %s", err, stderr.String())
		}
	case <-time.After(10 * time.Second):
		b.Fatalf("benchproxy not ready after 10s: %s", stderr.String())
	}
	return addr
}
