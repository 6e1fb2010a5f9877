package lab_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/test/lab"
	"github.com/imdsguard/imdsguard/test/labclient/report"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// clientResult is labclient's report.
type clientResult = report.Report

func decodeLast(t *testing.T, out []byte) clientResult {
	t.Helper()
	r, err := report.Parse(out)
	if err != nil {
		t.Fatalf("decode labclient output %q: %v", out, err)
	}
	return r
}

// serveIMDS serves, on a listener in the imds namespace, a body naming the
// local address the request arrived at.
func serveIMDS(t *testing.T, l *lab.Lab, addr string) {
	t.Helper()
	ln, err := l.Listen(lab.IMDS, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			local := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
			fmt.Fprintf(w, "imds %s %s", local, r.URL.Path)
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

func TestLab(t *testing.T) {
	l := lab.New(t)

	// Reachability must work right after New: a single echo each, no retry.
	for _, dst := range []string{lab.IMDSv4, lab.IMDSv6, lab.ECSv4, lab.PodIdentityV4, lab.PodIdentityV6, lab.IMDSLinkV4, lab.IMDSLinkV6} {
		if err := l.Ping(lab.Pod, dst, 2*time.Second); err != nil {
			t.Errorf("ping from pod: %v", err)
		}
	}
	for _, dst := range []string{lab.PodV4, lab.PodV6} {
		if err := l.Ping(lab.IMDS, dst, 2*time.Second); err != nil {
			t.Errorf("ping from imds: %v", err)
		}
	}

	t.Run("cgroup", func(t *testing.T) {
		mnt, err := lab.CgroupV2Mount()
		if err != nil {
			t.Fatal(err)
		}
		if l.CgroupMount != mnt || filepath.Dir(l.Cgroup) != mnt {
			t.Errorf("CgroupMount %q, Cgroup %q; want under %q", l.CgroupMount, l.Cgroup, mnt)
		}
		if base := filepath.Base(l.Cgroup); base != "imdsguard-lab-"+l.ID || !strings.HasSuffix(l.CgroupRel, "/"+base) {
			t.Errorf("Cgroup %q, CgroupRel %q, ID %q", l.Cgroup, l.CgroupRel, l.ID)
		}
		var st unix.Stat_t
		if err := unix.Stat(l.Cgroup, &st); err != nil {
			t.Fatal(err)
		}
		if st.Ino != l.CgroupID {
			t.Errorf("CgroupID %d, inode %d", l.CgroupID, st.Ino)
		}
		if len(l.ID) != 8 || !strings.HasPrefix(l.ID, "ig") {
			t.Errorf("ID %q", l.ID)
		}
		for _, name := range []string{l.NodeIMDSLink, l.NodePodLink, l.IMDSLink, l.PodLink} {
			if len(name) > 15 {
				t.Errorf("interface name %q longer than 15", name)
			}
		}
	})

	t.Run("caller namespace untouched", func(t *testing.T) {
		links, err := netlink.LinkList()
		if err != nil {
			t.Fatal(err)
		}
		for _, link := range links {
			if strings.Contains(link.Attrs().Name, l.ID) {
				t.Errorf("lab link %q in the caller's namespace", link.Attrs().Name)
			}
		}
		addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range addrs {
			switch a.IP.String() {
			case lab.IMDSv4, lab.IMDSv6, lab.ECSv4, lab.PodIdentityV4, lab.PodIdentityV6, lab.AlibabaV4, lab.GCPv6, lab.OCIv6:
				t.Errorf("service address %s in the caller's namespace", a.IP)
			}
		}
		// The test's threads stay in the caller's namespace.
		self, err := netns.Get()
		if err != nil {
			t.Fatal(err)
		}
		defer self.Close()
		proc, err := netns.GetFromPid(os.Getpid())
		if err != nil {
			t.Fatal(err)
		}
		defer proc.Close()
		if !self.Equal(proc) {
			t.Error("thread left in another network namespace")
		}
	})

	bin := lab.BuildLabclient(t)
	targets := map[string]string{ // -addr -> expected local address at the server
		lab.IMDSv4 + ":80":               lab.IMDSv4 + ":80",
		"[" + lab.IMDSv6 + "]:80":        "[" + lab.IMDSv6 + "]:80",
		lab.ECSv4 + ":80":                lab.ECSv4 + ":80",
		lab.PodIdentityV4 + ":80":        lab.PodIdentityV4 + ":80",
		"[" + lab.PodIdentityV6 + "]:80": "[" + lab.PodIdentityV6 + "]:80",
		lab.IMDSLinkV4 + ":80":           lab.IMDSLinkV4 + ":80",
		"[::ffff:" + lab.IMDSv4 + "]:80": lab.IMDSv4 + ":80",
	}
	for _, a := range []string{lab.IMDSv4 + ":80", "[" + lab.IMDSv6 + "]:80", lab.ECSv4 + ":80",
		lab.PodIdentityV4 + ":80", "[" + lab.PodIdentityV6 + "]:80", lab.IMDSLinkV4 + ":80"} {
		serveIMDS(t, l, a)
	}

	t.Run("http from pod", func(t *testing.T) {
		for addr, local := range targets {
			t.Run(addr, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				cmd := l.Command(ctx, lab.Pod, bin, "-mode", "http", "-addr", addr, "-path", "/latest/meta-data/instance-id")
				out, err := cmd.Output()
				if err != nil {
					t.Fatalf("labclient: %v\n%s", err, out)
				}
				r := decodeLast(t, out)
				want := "imds " + local + " /latest/meta-data/instance-id"
				if r.ConnectErrno != "" || r.Status != 200 || r.Body != want || r.Error != "" {
					t.Errorf("got %+v; want status 200 body %q", r, want)
				}
				if r.PID != cmd.Process.Pid {
					t.Errorf("reported pid %d, started pid %d", r.PID, cmd.Process.Pid)
				}
			})
		}
	})

	t.Run("raw from pod", func(t *testing.T) {
		cmd := l.Command(context.Background(), lab.Pod, bin, "-mode", "raw", "-addr", lab.IMDSv4+":80",
			"-write", `GET /raw HTTP/1.1\r\n`, "-write", `Host: x\r\nConnection: close\r\n\r\n`)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("labclient: %v\n%s", err, out)
		}
		r := decodeLast(t, out)
		if len(r.Writes) != 2 || r.Writes[0].N != 19 || r.Writes[1].N != 30 || r.Writes[0].Errno != "" || r.Writes[1].Errno != "" {
			t.Errorf("writes %+v", r.Writes)
		}
		if !strings.HasPrefix(r.Response, "HTTP/1.1 200 OK\r\n") || !strings.HasSuffix(r.Response, "imds "+lab.IMDSv4+":80 /raw") {
			t.Errorf("response %q", r.Response)
		}
	})

	t.Run("process in lab cgroup and pod netns", func(t *testing.T) {
		checkRunningClient(t, l, bin, l.Cgroup, l.CgroupRel)
	})

	t.Run("sub-cgroup", func(t *testing.T) {
		dir, id := l.NewSubCgroup(t, "workload")
		if filepath.Dir(dir) != l.Cgroup {
			t.Fatalf("sub-cgroup %q not below %q", dir, l.Cgroup)
		}
		var st unix.Stat_t
		if err := unix.Stat(dir, &st); err != nil {
			t.Fatal(err)
		}
		if st.Ino != id {
			t.Errorf("id %d, inode %d", id, st.Ino)
		}
		checkRunningClient(t, l, bin, dir, l.CgroupRel+"/workload")
	})

	t.Run("cgroup outside the lab is refused", func(t *testing.T) {
		cmd := l.CommandInCgroup(context.Background(), lab.Pod, l.CgroupMount, bin, "-addr", lab.IMDSv4+":80")
		if err := cmd.Start(); err == nil {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatal("Start succeeded for a command in the root cgroup")
		}
	})

	t.Run("listen in node", func(t *testing.T) {
		// A listener in node, reached from pod via the node's pod-side address.
		ln, err := l.Listen(lab.Node, "tcp", net.JoinHostPort(lab.NodeV4, "8080"))
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		accepted := make(chan string, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				accepted <- err.Error()
				return
			}
			accepted <- c.RemoteAddr().String()
			c.Close()
		}()
		out, err := l.Command(context.Background(), lab.Pod, bin, "-addr", lab.NodeV4+":8080").Output()
		if err != nil {
			t.Fatalf("labclient: %v\n%s", err, out)
		}
		if r := decodeLast(t, out); r.ConnectErrno != "" {
			t.Fatalf("connect: %+v", r)
		}
		if from := <-accepted; !strings.HasPrefix(from, lab.PodV4+":") {
			t.Errorf("accepted from %q", from)
		}
	})
}

// checkRunningClient starts a labclient in the pod in cgroup dir (rel as
// seen in /proc), holds it after connect, and checks where it runs.
func checkRunningClient(t *testing.T, l *lab.Lab, bin, dir, rel string) {
	t.Helper()
	goFile := filepath.Join(t.TempDir(), "go")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := l.CommandInCgroup(ctx, lab.Pod, dir, bin, "-mode", "raw", "-addr", lab.IMDSv4+":80",
		"-wait-file", goFile, "-write", `GET /held HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	br := bufio.NewReader(stdout)
	line, err := br.ReadString('\n')
	if err != nil || strings.TrimSpace(line) != `{"connected":true}` {
		t.Fatalf("first line %q, %v", line, err)
	}

	cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains("\n"+string(cg), "\n0::"+rel+"\n") {
		t.Errorf("/proc/%d/cgroup = %q, want 0::%s", pid, cg, rel)
	}
	procs, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		t.Fatal(err)
	}
	if !containsField(string(procs), fmt.Sprint(pid)) {
		t.Errorf("%s/cgroup.procs = %q, missing %d", dir, procs, pid)
	}
	comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if strings.TrimSpace(string(comm)) != "labclient" {
		t.Errorf("comm %q", comm)
	}
	var procNS, podNS unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &procNS); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(l.NetnsPath(lab.Pod), &podNS); err != nil {
		t.Fatal(err)
	}
	if procNS.Ino != podNS.Ino || procNS.Dev != podNS.Dev {
		t.Errorf("process netns inode %d, pod netns inode %d", procNS.Ino, podNS.Ino)
	}

	if err := os.WriteFile(goFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(br)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("labclient: %v\n%s", err, out)
	}
	r := decodeLast(t, out)
	if r.PID != pid || !strings.HasPrefix(r.Response, "HTTP/1.1 200 OK") {
		t.Errorf("result %+v", r)
	}
}

func containsField(s, f string) bool {
	for _, x := range strings.Fields(s) {
		if x == f {
			return true
		}
	}
	return false
}

func TestTwoLabsAtOnce(t *testing.T) {
	a := lab.New(t)
	b := lab.New(t)
	if a.ID == b.ID || a.Cgroup == b.Cgroup || a.NetnsName(lab.Pod) == b.NetnsName(lab.Pod) {
		t.Fatalf("labs share names: %q %q", a.ID, b.ID)
	}
	for _, l := range []*lab.Lab{a, b} {
		if err := l.Ping(lab.Pod, lab.IMDSv4, 2*time.Second); err != nil {
			t.Errorf("lab %s: %v", l.ID, err)
		}
	}
}

func TestCleanup(t *testing.T) {
	lab.RequirePrivileged(t)
	bin := lab.BuildLabclient(t)
	var (
		l       *lab.Lab
		held    *exec.Cmd
		heldSub *exec.Cmd
		nodeNS  netns.NsHandle = -1
	)
	t.Run("lab", func(t *testing.T) {
		l = lab.New(t)
		// Listener deliberately left open: Close must close it.
		if _, err := l.Listen(lab.IMDS, "tcp", lab.IMDSv4+":80"); err != nil {
			t.Fatal(err)
		}
		// Processes deliberately left running: Close must kill them.
		start := func(dir string) *exec.Cmd {
			cmd := l.CommandInCgroup(context.Background(), lab.Pod, dir, bin, "-mode", "raw",
				"-addr", lab.IMDSv4+":80", "-wait-file", "/nonexistent/imdsguard-lab-never")
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || !strings.Contains(line, "connected") {
				t.Fatalf("first line %q, %v", line, err)
			}
			return cmd
		}
		held = start(l.Cgroup)
		sub, _ := l.NewSubCgroup(t, "sub")
		heldSub = start(sub)
		// Keep the node namespace alive past Close, to check the veths
		// were deleted rather than merely hidden.
		var err error
		if nodeNS, err = netns.GetFromPath(l.NetnsPath(lab.Node)); err != nil {
			t.Fatal(err)
		}
	})
	if nodeNS >= 0 {
		defer nodeNS.Close()
	}
	if l == nil || held == nil || heldSub == nil {
		t.Fatal("lab setup failed")
	}

	for _, cmd := range []*exec.Cmd{held, heldSub} {
		err := cmd.Wait()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Errorf("held process: Wait = %v, want killed by SIGKILL", err)
		}
	}
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), l.ID) {
		t.Errorf("ip netns list still shows the lab:\n%s", out)
	}
	for _, ns := range []lab.NS{lab.Node, lab.IMDS, lab.Pod} {
		if _, err := os.Lstat(l.NetnsPath(ns)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: %v", l.NetnsPath(ns), err)
		}
	}
	if _, err := os.Stat(l.Cgroup); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cgroup %s: %v", l.Cgroup, err)
	}
	out, err = exec.Command("ip", "-o", "link").CombinedOutput()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), l.ID) {
		t.Errorf("ip link shows lab interfaces:\n%s", out)
	}
	if nodeNS >= 0 {
		h, err := netlink.NewHandleAt(nodeNS)
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		for _, name := range []string{l.NodeIMDSLink, l.NodePodLink} {
			if _, err := h.LinkByName(name); err == nil {
				t.Errorf("veth %s still exists in the (pinned) node namespace", name)
			}
		}
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}
