package bpf

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
)

// The judge's sizes, from the generated bindings (enum judge_limit).
const (
	judgeBuf = int(JudgeTestJudgeLimitJUDGE_BUF)
	maxReqs  = int(JudgeTestJudgeLimitMAX_REQS)
)

// judgeConfig is the policy side of a judgement.
type judgeConfig struct {
	audit           bool
	noRequireToken  bool
	noRefuseForward bool
	prefixes        []string      // kernel form: "meta-data/iam/info"
	profile         *judgeProfile // nil: awsProfile
	// credBudget is the credential reads each message may make (the
	// daemon's count per cgroup decides it); nil: no limit
	credBudget *uint32
}

// judgeProfile is a cloud's metadata service as struct profile holds it
// (internal/cloud has the real ones; the policy package compiles them).
type judgeProfile struct {
	proof, ttl, tokenPath string
	maxTTL                uint32
	legacy                []string // whole path prefixes: "/opc/v1"
}

var awsProfile = judgeProfile{proof: "x-aws-ec2-metadata-token", ttl: "x-aws-ec2-metadata-token-ttl-seconds", tokenPath: "/latest/api/token"}

var defaultPrefixes = []string{"meta-data/iam/security-credentials", "meta-data/identity-credentials", "meta-data/iam/info"}

// judgeProg runs the judge's judge_message (http/judge.h) through BPF_PROG_TEST_RUN.
type judgeProg struct {
	objs JudgeTestObjects
	// credBudget is the judgement's cred_budget (setConfig sets it)
	credBudget uint32
	// crossCheck runs every judgement twice, with the judge's fast paths
	// and without (byte by byte through its state machine only), and fails
	// the test unless both decide exactly the same.
	crossCheck bool
}

// loadJudge loads the test program, or skips (fails under CI) without BPF.
func loadJudge(t testing.TB, cfg judgeConfig) *judgeProg {
	t.Helper()
	if os.Geteuid() != 0 {
		requirePrivileged(t, "needs root to load BPF programs")
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		requirePrivileged(t, "cannot raise the memlock limit: "+err.Error())
	}
	var jp judgeProg
	if err := LoadJudgeTestObjects(&jp.objs, nil); err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			t.Fatalf("loading judge test program: %+v", verr)
		}
		if errors.Is(err, ebpf.ErrNotSupported) {
			requirePrivileged(t, "kernel cannot load the judge test program: "+err.Error())
		}
		t.Fatalf("loading judge test program: %v", err)
	}
	t.Cleanup(func() { jp.objs.Close() })
	jp.setConfig(t, cfg)
	jp.crossCheck = true
	return &jp
}

func requirePrivileged(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("CI") == "true" || os.Getenv("IMDSGUARD_REQUIRE_PRIVILEGED") == "1" {
		t.Fatalf("privileged test cannot run: %s", why)
	}
	t.Skip(why)
}

func (jp *judgeProg) setConfig(t testing.TB, cfg judgeConfig) {
	t.Helper()
	var c ImdsguardConfig
	c.Mode = ModeEnforce
	if cfg.audit {
		c.Mode = ModeAudit
	}
	c.Flags = ConfigBlockNonHostNetns
	if !cfg.noRequireToken {
		c.Flags |= ConfigRequireToken
	}
	if !cfg.noRefuseForward {
		c.Flags |= ConfigRefuseForwarded
	}
	prefixes := cfg.prefixes
	if prefixes == nil {
		prefixes = defaultPrefixes
	}
	for i, p := range prefixes {
		c.Prefixes[i].Len = uint32(len(p))
		for k := range len(p) {
			c.Prefixes[i].S[k] = int8(p[k])
		}
	}
	c.PrefixCount = uint32(len(prefixes))
	prof := cfg.profile
	if prof == nil {
		prof = &awsProfile
	}
	prof.put(&c)
	jp.credBudget = ^uint32(0)
	if cfg.credBudget != nil {
		jp.credBudget = *cfg.credBudget
	}
	if err := jp.objs.TestConfig.Update(uint32(0), &c, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
}

func (jp *judgeProfile) put(c *ImdsguardConfig) {
	p := &c.Prof
	p.ProofLen, p.TtlLen, p.TokenPathLen = uint8(len(jp.proof)), uint8(len(jp.ttl)), uint8(len(jp.tokenPath))
	p.MaxTtl = jp.maxTTL
	putChars(p.Proof[:], jp.proof)
	putChars(p.Ttl[:], jp.ttl)
	putChars(p.TokenPath[:], jp.tokenPath)
	for i, l := range jp.legacy {
		c.Legacy[i].Len = uint32(len(l))
		putChars(c.Legacy[i].S[:], l)
	}
	c.LegacyCount = uint32(len(jp.legacy))
}

func putChars(dst []int8, s string) {
	for i := range len(s) {
		dst[i] = int8(s[i])
	}
}

// run judges msg (its first judgeBuf bytes) for a socket in state st.
func (jp *judgeProg) run(t testing.TB, msg []byte, st sockState) JudgeTestJudgeRun {
	t.Helper()
	out := jp.runMode(t, msg, st, false)
	if jp.crossCheck {
		slow := jp.runMode(t, msg, st, true)
		if d := diffRuns(out, slow); d != "" {
			t.Fatalf("fast paths and byte-by-byte walk disagree on %q (state %+v): %s", msg, st, d)
		}
	}
	return out
}

// runMode judges msg with the fast paths on, or off (slow).
func (jp *judgeProg) runMode(t testing.TB, msg []byte, st sockState, slow bool) JudgeTestJudgeRun {
	t.Helper()
	var in JudgeTestJudgeRun
	if slow {
		in.FastOff = 1
	}
	n := min(len(msg), judgeBuf)
	buf := make([]byte, n+1) // +1: a valid pointer even for an empty message
	copy(buf, msg[:n])
	in.Data = uint64(uintptr(unsafe.Pointer(&buf[0])))
	in.Len = uint32(n)
	in.MsgSize = uint32(len(msg))
	in.Skip = st.skip
	in.RerunFrom = st.rerunFrom
	in.Unsynced = st.unsynced
	in.ForceReason = uint32(st.force)
	in.CredBudget = jp.credBudget
	var out JudgeTestJudgeRun
	ret, err := jp.objs.JudgeTest.Run(&ebpf.RunOptions{Context: in, ContextOut: &out})
	runtimeKeepAlive(buf)
	if err != nil {
		t.Fatalf("running judge: %v", err)
	}
	if ret != 0 {
		t.Fatalf("judge test program returned %d", int32(ret))
	}
	return out
}

// sockState is what the judge keeps of a socket across writes (struct
// judge_state; unsynced is 1 for a socket adopted at start), plus force: the
// reason the sk_msg program imposes on every request (REASON_NON_HOST_NETNS
// for a socket of another network namespace).
type sockState struct {
	skip, rerunFrom, unsynced uint32
	force                     Reason
}

// request is one judged request as the sk_msg program reports it.
type request struct {
	Method     string
	Path       string
	Action     Action
	Reason     Reason
	HasToken   bool
	Credential bool
	Forwarded  bool
	TokenPut   bool
}

func reqFrom(r JudgeTestReqResult) request {
	m := make([]byte, 0, len(r.Method))
	for i := 0; i < int(r.MethodLen) && i < len(r.Method); i++ {
		m = append(m, byte(r.Method[i]))
	}
	p := make([]byte, 0, len(r.Path))
	for i := 0; i < int(r.PathLen) && i < len(r.Path); i++ {
		p = append(p, byte(r.Path[i]))
	}
	return request{
		Method:     string(m),
		Path:       string(p),
		Action:     Action(r.Action),
		Reason:     Reason(r.Reason),
		HasToken:   r.Flags&uint8(JudgeTestReqFlagREQ_HAS_TOKEN) != 0,
		Credential: r.Flags&uint8(JudgeTestReqFlagREQ_CREDENTIAL) != 0,
		Forwarded:  r.Flags&uint8(JudgeTestReqFlagREQ_FORWARDED) != 0,
		TokenPut:   r.Flags&uint8(JudgeTestReqFlagREQ_TOKEN_PUT) != 0,
	}
}

// conn models one TCP socket under the sk_msg program the way
// net/ipv4/tcp_bpf.c drives it: a corked message accumulates writes until
// it reaches its cork size, then the program runs on the whole of it;
// apply_bytes sends that many bytes and re-runs the program on the rest;
// SK_DROP frees the message and fails the write with EACCES unless bytes of
// the same write were already sent (then the write is short). A drop
// verdict sticks to the socket (tcp_bpf_send_verdict returns before it
// resets psock->eval): every later write fails with EACCES without the
// program running, as observed on Linux 6.18.
type conn struct {
	jp      *judgeProg
	st      sockState
	corked  []byte
	corkTo  int
	sent    []byte    // bytes the server received
	judged  []request // final verdicts, in order (the events the program emits)
	maxRuns int
	dropped bool // a drop verdict stuck to the socket
}

func newConn(jp *judgeProg) *conn { return &conn{jp: jp, maxRuns: 1000} }

// write returns the byte count write() reports, or an error for EACCES.
func (c *conn) write(t testing.TB, b []byte) (int, error) {
	t.Helper()
	if c.dropped {
		return 0, errEACCES
	}
	msg := b
	if c.corkTo > 0 {
		c.corked = append(c.corked, b...)
		if len(c.corked) < c.corkTo {
			return len(b), nil
		}
		msg, c.corked, c.corkTo = c.corked, nil, 0
	}
	sentBefore := len(c.sent)
	for runs := 0; len(msg) > 0; runs++ {
		if runs > c.maxRuns {
			t.Fatalf("judge did not converge on %q", msg)
		}
		out := c.jp.run(t, msg, c.st)
		c.st = sockState{out.Skip, out.RerunFrom, out.Unsynced, c.st.force}
		for k := out.EmitFrom; k < out.EmitTo && k < uint32(maxReqs); k++ {
			r := reqFrom(out.Reqs[k])
			c.judged = append(c.judged, r)
			// the daemon counts the credential reads that reach the
			// server, and the next run's budget is what is left
			if r.Credential && r.Reason == ReasonNone && c.jp.credBudget != ^uint32(0) && c.jp.credBudget > 0 {
				c.jp.credBudget--
			}
		}
		if out.Cork > 0 {
			if out.Verdict != 0 || out.Apply != 0 || out.EmitTo != out.EmitFrom {
				t.Fatalf("cork with verdict %d apply %d emit %d..%d", out.Verdict, out.Apply, out.EmitFrom, out.EmitTo)
			}
			if int(out.Cork) <= len(msg) {
				t.Fatalf("cork to %d bytes for a %d-byte message", out.Cork, len(msg))
			}
			c.corked, c.corkTo = msg, int(out.Cork)
			return len(b), nil
		}
		if out.Verdict == 1 { // VERDICT_DROP
			c.dropped = true
			if n := len(c.sent) - sentBefore; n > 0 {
				// the kernel reports what this write sent; its own bytes only
				return min(n, len(b)), nil
			}
			return 0, errEACCES
		}
		n := len(msg)
		if out.Apply > 0 {
			if int(out.Apply) > len(msg) {
				t.Fatalf("apply %d bytes of a %d-byte message", out.Apply, len(msg))
			}
			n = int(out.Apply)
		}
		c.sent = append(c.sent, msg[:n]...)
		msg = msg[n:]
	}
	return len(b), nil
}

var errEACCES = errors.New("EACCES")

// parserState is the parser state a judge run reports, without its
// requests and with the array bytes past their lengths cleared (scratch space an earlier request
// may have left anything in).
func parserState(r JudgeTestJudgeRun) JudgeTestParser {
	p := r.Parser
	p.Reqs = [len(p.Reqs)]JudgeTestReqResult{}          // compared one by one, in diffRuns
	if p.Nreqs == 0 && (p.State == 0 || p.State == 1) { // P_PRE, P_BODY
		// no request started in this walk: the fields start_request
		// sets are what an earlier walk (maybe on another CPU) left
		p = JudgeTestParser{Pos: p.Pos, Len: p.Len, State: p.State, Stop: p.Stop, ReqStart: p.ReqStart, Skip: p.Skip,
			Boundary: p.Boundary, Unsynced: p.Unsynced, ForceReason: p.ForceReason, CfgFlags: p.CfgFlags}
		return p
	}
	for i := range p.Segs {
		if uint32(i) >= p.Nseg {
			p.Segs[i] = 0
		}
	}
	for i := range p.Norm {
		if uint32(i) >= p.Nlen {
			p.Norm[i] = 0
		}
	}
	for i := range p.Method {
		if uint32(i) >= p.MethodLen {
			p.Method[i] = 0
		}
	}
	return p
}

// diffRuns describes how two judgements of the same bytes differ, or is
// empty: every output the sk_msg program acts on, and each judged request's
// meaningful bytes (the scratch space past a method's or path's length holds
// whatever an earlier request left there).
func diffRuns(a, b JudgeTestJudgeRun) string {
	type judgement struct {
		Skip, RerunFrom, Unsynced, Verdict, Cork, Apply, EmitFrom, EmitTo, Nreqs uint32
	}
	ja := judgement{a.Skip, a.RerunFrom, a.Unsynced, a.Verdict, a.Cork, a.Apply, a.EmitFrom, a.EmitTo, a.Nreqs}
	jb := judgement{b.Skip, b.RerunFrom, b.Unsynced, b.Verdict, b.Cork, b.Apply, b.EmitFrom, b.EmitTo, b.Nreqs}
	if ja != jb {
		return fmt.Sprintf("judgement %+v, byte by byte %+v", ja, jb)
	}
	if pa, pb := parserState(a), parserState(b); pa != pb {
		return fmt.Sprintf("parser state\n  %+v\nbyte by byte\n  %+v", pa, pb)
	}
	for k := range min(int(a.Nreqs), maxReqs) {
		ra, rb := a.Reqs[k], b.Reqs[k]
		type result struct {
			Start, End, ContentLength uint32
			PathLen                   uint16
			Action, Reason, Flags     uint8
			MethodLen                 uint8
			Method, Path              string
		}
		res := func(r JudgeTestReqResult) result {
			q := reqFrom(r)
			return result{r.Start, r.End, r.ContentLength, r.PathLen, r.Action, r.Reason, r.Flags, r.MethodLen, q.Method, q.Path}
		}
		if res(ra) != res(rb) {
			return fmt.Sprintf("request %d: %+v, byte by byte %+v", k, res(ra), res(rb))
		}
	}
	return ""
}

// writeAll sends each part as one write and reports the first EACCES.
func (c *conn) writeAll(t testing.TB, parts ...string) (denied bool) {
	t.Helper()
	for _, p := range parts {
		if _, err := c.write(t, []byte(p)); err != nil {
			denied = true
		}
	}
	return denied
}

func (c *conn) summary() string {
	var b strings.Builder
	for _, r := range c.judged {
		b.WriteString(r.Method + " " + r.Path + " " + r.Action.String() + " " + r.Reason.String() + "\n")
	}
	return b.String()
}
