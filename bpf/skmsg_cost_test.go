package bpf_test

// The sk_msg program measured and checked on its own: loaded from the
// committed object, attached to its sockhash (no cgroup, no sockops), with a
// loopback TCP connection's client socket put into the sockhash from user
// space. Every write on that socket runs imds_msg exactly as it runs for a
// connection to IMDS; nothing leaves the loopback interface.
//
//	go test -run '^$' -bench 'SkMsg|JudgeAlone' ./bpf/
//
// reports the kernel's own figures (BPF_ENABLE_STATS: run_time_ns/run_cnt)
// as ns/judged-req, next to the wall-clock ns/op of the write: the whole
// sk_msg program per judged request (one write, one request, one run), back
// to back (warm caches) and one per millisecond (cold), and the judge alone
// (judge_message through the test program; its figure includes the test
// program's own copy of the request from user memory and of the results).
// Root only; skipped otherwise (failed with CI=true or
// IMDSGUARD_REQUIRE_PRIVILEGED=1), like the other privileged tests.

import (
	"errors"
	"fmt"
	"github.com/imdsguard/imdsguard/internal/cloud"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/imdsguard/imdsguard/bpf"
	"github.com/imdsguard/imdsguard/internal/policy"
	"github.com/imdsguard/imdsguard/test/lab"
)

// sdkToken is as long as the tokens IMDS hands out.
var sdkToken = strings.Repeat("A", 56)

// sdkRequest is what an AWS SDK sends for a role's credentials (224 bytes).
var sdkRequest = "GET /latest/meta-data/iam/security-credentials/ HTTP/1.1\r\n" +
	"Host: 169.254.169.254\r\n" +
	"User-Agent: aws-sdk-go-v2/1.30.3\r\n" +
	"X-aws-ec2-metadata-token: " + sdkToken + "\r\n" +
	"Accept-Encoding: gzip\r\n" +
	"\r\n"

// sdkRequestLongUA is the same with the User-Agent an SDK sends in full
// (276 bytes).
var sdkRequestLongUA = strings.Replace(sdkRequest, "aws-sdk-go-v2/1.30.3",
	"aws-sdk-go-v2/1.30.3 os/linux lang/go#1.22.5 md/GOOS#linux md/GOARCH#amd", 1)

// skMsgLab is imds_msg attached to its sockhash, with the default policy.
type skMsgLab struct {
	objs bpf.ImdsguardObjects
	rd   *ringbuf.Reader
}

func compiledDefault(tb testing.TB) *policy.Compiled {
	tb.Helper()
	pol, err := policy.Default(cloud.AWS)
	if err != nil {
		tb.Fatal(err)
	}
	c, err := pol.Compile()
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

func newSkMsgLab(tb testing.TB) *skMsgLab {
	tb.Helper()
	lab.RequirePrivileged(tb)
	spec, err := bpf.LoadImdsguard()
	if err != nil {
		tb.Fatal(err)
	}
	return newSkMsgLabSpec(tb, spec)
}

// newSkMsgLabSpec is newSkMsgLab for the programs of spec (another build
// of imdsguard.c, to compare).
func newSkMsgLabSpec(tb testing.TB, spec *ebpf.CollectionSpec) *skMsgLab {
	tb.Helper()
	if err := rlimit.RemoveMemlock(); err != nil {
		tb.Fatal(err)
	}
	l := &skMsgLab{}
	if err := spec.LoadAndAssign(&l.objs, nil); err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			tb.Fatalf("loading: %+v", verr)
		}
		tb.Fatalf("loading: %v", err)
	}
	tb.Cleanup(func() { l.objs.Close() })

	// the policy as the loader writes it (internal/loader writePolicy), in
	// generation 0, with this network namespace as the host's
	c := compiledDefault(tb)
	cfg := c.Config
	cookie, err := netnsCookie()
	if err != nil {
		tb.Fatal(err)
	}
	cfg.HostNetnsCookie = cookie
	if err := l.objs.ConfigMap.Update(uint32(0), &cfg, ebpf.UpdateAny); err != nil {
		tb.Fatal(err)
	}
	for i, r := range c.Rules {
		if err := l.objs.Rules.Update(uint32(i), &r, ebpf.UpdateAny); err != nil {
			tb.Fatal(err)
		}
	}
	cands, err := c.DefaultCandidates()
	if err != nil {
		tb.Fatal(err)
	}
	var list bpf.ImdsguardRuleList
	list.N = uint32(len(cands))
	copy(list.Idx[:], cands)
	if err := l.objs.CgroupRules.Update(&bpf.ImdsguardCgroupKey{}, &list, ebpf.UpdateAny); err != nil {
		tb.Fatal(err)
	}

	opts := link.RawAttachProgramOptions{Target: l.objs.ImdsSocks.FD(), Program: l.objs.ImdsMsg, Attach: ebpf.AttachSkMsgVerdict}
	if err := link.RawAttachProgram(opts); err != nil {
		tb.Fatalf("attaching sk_msg: %v", err)
	}
	tb.Cleanup(func() {
		if err := link.RawDetachProgram(link.RawDetachProgramOptions{Target: opts.Target, Program: opts.Program, Attach: opts.Attach}); err != nil {
			tb.Errorf("detaching sk_msg: %v", err)
		}
	})
	l.rd, err = ringbuf.NewReader(l.objs.Events)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { l.rd.Close() })
	return l
}

func netnsCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	return unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
}

// guardedConn is a loopback TCP connection whose client socket is under
// imds_msg; the server side reads and discards everything.
type guardedConn struct {
	*net.TCPConn
	port     int
	received chan []byte // everything the server read, once the client closes
}

var nextSockKey uint64

func (l *skMsgLab) dial(tb testing.TB) *guardedConn {
	tb.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	cl, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	srv, err := ln.Accept()
	if err != nil {
		tb.Fatal(err)
	}
	gc := &guardedConn{TCPConn: cl.(*net.TCPConn), port: ln.Addr().(*net.TCPAddr).Port, received: make(chan []byte, 1)}
	go func() {
		b, _ := io.ReadAll(srv)
		srv.Close()
		gc.received <- b
	}()
	tb.Cleanup(func() { cl.Close() })

	raw, err := gc.SyscallConn()
	if err != nil {
		tb.Fatal(err)
	}
	nextSockKey++
	key := nextSockKey
	var uerr error
	if err := raw.Control(func(fd uintptr) {
		uerr = l.objs.ImdsSocks.Update(key, uint64(fd), ebpf.UpdateAny)
	}); err != nil {
		tb.Fatal(err)
	}
	if uerr != nil {
		tb.Fatalf("putting the socket into the sockhash: %v", uerr)
	}
	return gc
}

// drain reads every event in the ring buffer.
func (l *skMsgLab) drain(tb testing.TB) []bpf.ImdsguardEvent {
	tb.Helper()
	var out []bpf.ImdsguardEvent
	l.rd.SetDeadline(time.Now())
	for {
		rec, err := l.rd.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return out
		}
		if err != nil {
			tb.Fatal(err)
		}
		var e bpf.ImdsguardEvent
		if len(rec.RawSample) < int(unsafe.Sizeof(e)) {
			tb.Fatalf("event of %d bytes", len(rec.RawSample))
		}
		e = *(*bpf.ImdsguardEvent)(unsafe.Pointer(&rec.RawSample[0]))
		out = append(out, e)
	}
}

func cstr(b []int8, n int) string {
	s := make([]byte, 0, len(b))
	for i := 0; i < n && i < len(b); i++ {
		s = append(s, byte(b[i]))
	}
	return string(s)
}

func counter(tb testing.TB, l *skMsgLab, slot uint32) uint64 {
	tb.Helper()
	var per []uint64
	if err := l.objs.Counters.Lookup(slot, &per); err != nil {
		tb.Fatal(err)
	}
	var n uint64
	for _, v := range per {
		n += v
	}
	return n
}

// TestSkMsgLoopback checks what the sk_msg program itself does around the
// judge (the judge has its own tables): which writes pass, which fail, the
// bytes the server gets, and every field of the events.
func TestSkMsgLoopback(t *testing.T) {
	l := newSkMsgLab(t)
	// how much of the verifier's budget (1M instructions) the programs use
	for name, p := range map[string]*ebpf.Program{"imds_msg": l.objs.ImdsMsg, "imds_connect4": l.objs.ImdsConnect4} {
		if info, err := p.Info(); err == nil {
			if n, ok := info.VerifiedInstructions(); ok {
				t.Logf("%s: %d instructions verified", name, n)
			}
		}
	}
	longPath := "/latest/meta-data/" + strings.Repeat("p", 150)
	type want struct {
		action     bpf.Action
		reason     bpf.Reason
		flags      uint8
		method     string
		path       string // the first 128 bytes as sent
		pathLen    int
		writeFails bool
	}
	host := bpf.EventHostNetns
	type loopbackCase struct {
		name   string
		writes []string
		want   []want
		sent   string
	}
	cases := []loopbackCase{
		{"SDK request", []string{sdkRequest},
			[]want{{bpf.ActionAllow, bpf.ReasonNone, host | bpf.EventHasToken | bpf.EventCredentialAccess,
				"GET", "/latest/meta-data/iam/security-credentials/", 43, false}}, sdkRequest},
		{"split request, tiny writes", []string{"G", "ET", " /latest/meta-data/instance-id HTTP/1.1\r\nX-aws-ec2-metadata-token: x\r\n", "\r", "\n"},
			[]want{{bpf.ActionAllow, bpf.ReasonNone, host | bpf.EventHasToken, "GET", "/latest/meta-data/instance-id", 29, false}},
			"GET /latest/meta-data/instance-id HTTP/1.1\r\nX-aws-ec2-metadata-token: x\r\n\r\n"},
		{"long path, long method", []string{"ABCDEFGHIJ " + longPath + " HTTP/1.1\r\nX-aws-ec2-metadata-token: x\r\n\r\n"},
			[]want{{bpf.ActionAllow, bpf.ReasonNone, host | bpf.EventHasToken, "ABCDEFGH", longPath[:128], len(longPath), false}},
			"ABCDEFGHIJ " + longPath + " HTTP/1.1\r\nX-aws-ec2-metadata-token: x\r\n\r\n"},
		{"token-less request refused", []string{"GET /latest/meta-data/iam/security-credentials/r HTTP/1.1\r\nHost: x\r\n\r\n"},
			[]want{{bpf.ActionDeny, bpf.ReasonIMDSv1NoToken, host | bpf.EventCredentialAccess,
				"GET", "/latest/meta-data/iam/security-credentials/r", 44, true}}, ""},
		{"pipelined: allowed then refused", []string{sdkRequest + "PUT /x HTTP/1.1\r\n\r\n"},
			[]want{
				{bpf.ActionAllow, bpf.ReasonNone, host | bpf.EventHasToken | bpf.EventCredentialAccess,
					"GET", "/latest/meta-data/iam/security-credentials/", 43, false},
				{bpf.ActionDeny, bpf.ReasonIMDSv1NoToken, host, "PUT", "/x", 2, true},
			}, sdkRequest},
		{"message over the judge's buffer", []string{strings.Repeat(sdkRequest, 80)},
			func() []want {
				var w []want
				for range 80 {
					w = append(w, want{bpf.ActionAllow, bpf.ReasonNone, host | bpf.EventHasToken | bpf.EventCredentialAccess,
						"GET", "/latest/meta-data/iam/security-credentials/", 43, false})
				}
				return w
			}(), strings.Repeat(sdkRequest, 80)},
	}
	// messages around the size up to which the program copies words itself
	// (a helper copies larger ones), and one spanning several pages
	const idPath = "/latest/meta-data/instance-id"
	sized := func(n int) string {
		head := "GET " + idPath + " HTTP/1.1\r\nX-aws-ec2-metadata-token: t\r\nX-Pad: "
		return head + strings.Repeat("p", n-len(head)-4) + "\r\n\r\n"
	}
	idWant := want{bpf.ActionAllow, bpf.ReasonNone, host | bpf.EventHasToken, "GET", idPath, len(idPath), false}
	for _, n := range []int{100, 511, 512, 513, 4000} {
		req := sized(n)
		cases = append(cases, loopbackCase{fmt.Sprintf("%d-byte request", n), []string{req}, []want{idWant}, req})
	}
	pages := sized(4000) + sized(3000) + sized(4000)
	cases = append(cases, loopbackCase{"message over several pages", []string{pages}, []want{idWant, idWant, idWant}, pages})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l.drain(t)
			c := l.dial(t)
			failed := false
			for _, w := range tc.writes {
				if _, err := c.Write([]byte(w)); err != nil {
					if !errors.Is(err, syscall.EACCES) {
						t.Fatalf("write: %v", err)
					}
					failed = true
				}
			}
			c.Close()
			var got []byte
			select {
			case got = <-c.received:
			case <-time.After(5 * time.Second):
				t.Fatal("server did not see the connection close")
			}
			if string(got) != tc.sent {
				t.Errorf("server received %q, want %q", got, tc.sent)
			}
			evs := l.drain(t)
			if len(evs) != len(tc.want) {
				t.Fatalf("%d events, want %d: %+v", len(evs), len(tc.want), evs)
			}
			wantFail := false
			for i, w := range tc.want {
				wantFail = wantFail || w.writeFails
				e := evs[i]
				if e.Kind != uint8(bpf.KindRequest) || bpf.Action(e.Action) != w.action || bpf.Reason(e.Reason) != w.reason || e.Flags != w.flags {
					t.Errorf("event %d: kind %d action %v reason %v flags %#x, want action %v reason %v flags %#x",
						i, e.Kind, bpf.Action(e.Action), bpf.Reason(e.Reason), e.Flags, w.action, w.reason, w.flags)
				}
				if m := cstr(e.Method[:], int(e.MethodLen)); m != w.method {
					t.Errorf("event %d: method %q, want %q", i, m, w.method)
				}
				if p := cstr(e.Path[:], min(int(e.PathLen), len(e.Path))); p != w.path || int(e.PathLen) != w.pathLen {
					t.Errorf("event %d: path %q (%d), want %q (%d)", i, p, e.PathLen, w.path, w.pathLen)
				}
				if e.Pid != uint32(os.Getpid()) || e.Ppid != uint32(os.Getppid()) || e.Uid != uint32(os.Getuid()) || e.Gid != uint32(os.Getgid()) || e.Tid == 0 {
					t.Errorf("event %d: pid %d ppid %d tid %d uid %d gid %d, want pid %d ppid %d", i, e.Pid, e.Ppid, e.Tid, e.Uid, e.Gid, os.Getpid(), os.Getppid())
				}
				if exe, _ := os.Executable(); e.Comm[0] == 0 || !strings.HasPrefix(fileBase(exe), cstr(e.Comm[:], clen(e.Comm[:]))) {
					t.Errorf("event %d: comm %q", i, cstr(e.Comm[:], clen(e.Comm[:])))
				}
				cookie, _ := netnsCookie()
				if e.NetnsCookie != cookie || e.CgroupId == 0 || e.TsNs == 0 || e.Gen != 0 || e.Rule != 0 {
					t.Errorf("event %d: netns %d (want %d) cgroup %d ts %d gen %d rule %d", i, e.NetnsCookie, cookie, e.CgroupId, e.TsNs, e.Gen, e.Rule)
				}
				wantAddr := [16]uint8{10: 0xff, 11: 0xff, 12: 127, 15: 1}
				if e.Addr != wantAddr || int(e.Port) != c.port {
					t.Errorf("event %d: endpoint %v port %d, want %v port %d", i, e.Addr, e.Port, wantAddr, c.port)
				}
				if e.Pad0 != 0 || e.Pad != [2]uint8{} {
					t.Errorf("event %d: padding not zero", i)
				}
			}
			if failed != wantFail {
				t.Errorf("a write failed: %v, want %v", failed, wantFail)
			}
		})
	}
}

func fileBase(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[i+1:]
	}
	return p
}

func clen(b []int8) int {
	for i, c := range b {
		if c == 0 {
			return i
		}
	}
	return len(b)
}

func progStats(tb testing.TB, p *ebpf.Program) (runs uint64, ns time.Duration) {
	tb.Helper()
	st, err := p.Stats()
	if err != nil {
		tb.Fatal(err)
	}
	return st.RunCount, st.Runtime
}

func enableStats(tb testing.TB) {
	tb.Helper()
	s, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		tb.Fatalf("enabling BPF run-time statistics: %v", err)
	}
	tb.Cleanup(func() { s.Close() })
}

// BenchmarkSkMsgJudgedRequest writes the SDK request on one keep-alive
// socket under imds_msg, one write per request (one program run each), and
// reports the program's own run time per judged request. The ring buffer
// is drained often enough that it stays under the quarter-full mark (no
// forced wake-ups), as the daemon's reader keeps it.
// benchRequests are the requests the benchmarks judge.
var benchRequests = []struct{ name, req string }{
	{"sdk-224B", sdkRequest},
	{"sdk-276B", sdkRequestLongUA},
}

func BenchmarkSkMsgJudgedRequest(b *testing.B) {
	for _, bc := range []struct {
		name string
		gap  time.Duration
	}{{"back-to-back", 0}, {"paced-1ms", time.Millisecond}} {
		for _, br := range benchRequests {
			b.Run(br.name+"/"+bc.name, func(b *testing.B) { benchSkMsg(b, []byte(br.req), bc.gap) })
		}
	}
}

func benchSkMsg(b *testing.B, msg []byte, gap time.Duration) {
	l := newSkMsgLab(b)
	enableStats(b)
	c := l.dial(b)
	// warm up: the socket's storage, the caches
	for range 100 {
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
	}
	l.drain(b)
	runs0, ns0 := progStats(b, l.objs.ImdsMsg)
	allow0 := counter(b, l, bpf.CounterSlot(bpf.KindRequest, bpf.ActionAllow, bpf.ReasonNone))
	b.ResetTimer()
	for i := range b.N {
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
		if i%100 == 99 {
			b.StopTimer()
			l.drain(b)
			b.StartTimer()
		}
		if gap > 0 {
			time.Sleep(gap)
		}
	}
	b.StopTimer()
	runs1, ns1 := progStats(b, l.objs.ImdsMsg)
	allow1 := counter(b, l, bpf.CounterSlot(bpf.KindRequest, bpf.ActionAllow, bpf.ReasonNone))
	l.drain(b)
	if runs1-runs0 != uint64(b.N) || allow1-allow0 != uint64(b.N) {
		b.Fatalf("%d writes: %d program runs, %d allowed requests", b.N, runs1-runs0, allow1-allow0)
	}
	if lost := counter(b, l, bpf.CounterEventsLost); lost != 0 {
		b.Fatalf("%d events lost", lost)
	}
	b.ReportMetric(float64(ns1-ns0)/float64(runs1-runs0), "ns/judged-req")
}

// BenchmarkJudgeAlone runs the judge's judge_message (http/judge.h) on the same request
// through the judge test program (BPF_PROG_TEST_RUN), the parser's share of
// the sk_msg program (plus one bpf_copy_from_user).
func BenchmarkJudgeAlone(b *testing.B) {
	for _, br := range benchRequests {
		b.Run(br.name, func(b *testing.B) { benchJudgeAlone(b, []byte(br.req)) })
	}
}

func benchJudgeAlone(b *testing.B, msg []byte) {
	lab.RequirePrivileged(b)
	if err := rlimit.RemoveMemlock(); err != nil {
		b.Fatal(err)
	}
	var objs bpf.JudgeTestObjects
	if err := bpf.LoadJudgeTestObjects(&objs, nil); err != nil {
		b.Fatalf("loading the judge test program: %v", err)
	}
	defer objs.Close()
	c := compiledDefault(b)
	if err := objs.TestConfig.Update(uint32(0), &c.Config, ebpf.UpdateAny); err != nil {
		b.Fatal(err)
	}
	enableStats(b)
	// no credential-read limit, as the default policy has none
	in := bpf.JudgeTestJudgeRun{Data: uint64(uintptr(unsafe.Pointer(&msg[0]))), Len: uint32(len(msg)), MsgSize: uint32(len(msg)), CredBudget: ^uint32(0)}
	var out bpf.JudgeTestJudgeRun
	runs0, ns0 := progStats(b, objs.JudgeTest)
	b.ResetTimer()
	for range b.N {
		ret, err := objs.JudgeTest.Run(&ebpf.RunOptions{Context: in, ContextOut: &out})
		if err != nil || ret != 0 {
			b.Fatalf("judge test run: %d, %v", int32(ret), err)
		}
	}
	b.StopTimer()
	runtime.KeepAlive(msg)
	if out.Nreqs != 1 || out.Reqs[0].Action != uint8(bpf.ActionAllow) || out.Reqs[0].Flags != 3 {
		b.Fatalf("the judge did not allow the request: %+v", out)
	}
	runs1, ns1 := progStats(b, objs.JudgeTest)
	b.ReportMetric(float64(ns1-ns0)/float64(runs1-runs0), "ns/judged-req")
}
