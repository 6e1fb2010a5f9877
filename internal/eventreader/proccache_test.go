package eventreader

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// startChild runs a command that lives until the test ends.
func startChild(t *testing.T, name string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(name, args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopChild(cmd) })
	waitExe(t, cmd.Process.Pid, "") // Start returns once the exe is the child's
	return cmd
}

// stopChild kills and reaps a child: after it returns its pid is free.
func stopChild(cmd *exec.Cmd) {
	if cmd.ProcessState == nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
}

// countingCache is a cache whose reads of /proc are counted.
func countingCache(max int) (*procCache, *int) {
	c := newProcCache(max, procMaxAge)
	reads := new(int)
	c.read = func(pid uint32) (string, string) { *reads++; return processInfo(pid) }
	return c, reads
}

func checkLookup(t *testing.T, c *procCache, pid int, comm string) {
	t.Helper()
	exe, cmdline := c.lookup(uint32(pid), comm, c.mono())
	wantExe, wantCmdline := processInfo(uint32(pid))
	if exe != wantExe || cmdline != wantCmdline {
		t.Fatalf("lookup(%d, %q) = %q, %q; /proc says %q, %q", pid, comm, exe, cmdline, wantExe, wantCmdline)
	}
}

// Repeated events of one process read /proc once.
func TestProcCacheHits(t *testing.T) {
	c, reads := countingCache(8)
	defer c.close()
	for range 5 {
		checkLookup(t, c, os.Getpid(), "comm")
	}
	if *reads != 1 {
		t.Fatalf("%d reads of /proc for 5 events of one process, want 1", *reads)
	}
}

// A process that exited is not served from the cache, whatever comm its
// pid's next event carries.
func TestProcCacheExitedProcess(t *testing.T) {
	c, _ := countingCache(8)
	defer c.close()
	child := startChild(t, "sleep", "60")
	pid := child.Process.Pid
	checkLookup(t, c, pid, "sleep")
	stopChild(child)
	if exe, cmdline := c.lookup(uint32(pid), "sleep", c.mono()); exe != "" || cmdline != "" {
		t.Fatalf("exited pid %d: lookup = %q, %q, want empty", pid, exe, cmdline)
	}
	if len(c.procs) != 0 {
		t.Fatalf("exited process still cached: %v", c.procs)
	}
}

// An event stamped before the last poll that found its process alive is
// that process's, even once it has exited: it is served without a poll.
// One stamped after the exit is not.
func TestProcCacheEventsBeforeLastCheck(t *testing.T) {
	c, reads := countingCache(8)
	defer c.close()
	child := startChild(t, "sleep", "61")
	pid := uint32(child.Process.Pid)
	c.lookup(pid, "sleep", c.mono())
	checkedAt := c.procs[pid].aliveAt
	stopChild(child)
	if exe, cmdline := c.lookup(pid, "sleep", checkedAt); !strings.HasSuffix(exe, "/sleep") || cmdline != "sleep 61" || *reads != 1 {
		t.Fatalf("event from before the exit: lookup = %q, %q after %d reads, want the cached child's", exe, cmdline, *reads)
	}
	if exe, cmdline := c.lookup(pid, "sleep", c.mono()); exe != "" || cmdline != "" {
		t.Fatalf("event from after the exit: lookup = %q, %q, want empty", exe, cmdline)
	}
}

// The clock of the checks is the kernel's CLOCK_MONOTONIC, never ahead of it.
func TestMonotonicClock(t *testing.T) {
	mono := monotonicClock()
	for range 100 {
		var ts unix.Timespec
		got := mono()
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
			t.Fatal(err)
		}
		if kernel := uint64(ts.Nano()); got > kernel || kernel-got > uint64(100*time.Millisecond) {
			t.Fatalf("monotonicClock() = %d, CLOCK_MONOTONIC then %d", got, kernel)
		}
	}
}

// A pid the kernel gives to another process gets that process's details,
// even under the same comm. The test steers the kernel into reusing the pid
// through ns_last_pid (root only); other processes forking meanwhile can
// take it first, so it tries a few times.
func TestProcCachePidReused(t *testing.T) {
	const lastPid = "/proc/sys/kernel/ns_last_pid"
	if os.Geteuid() != 0 {
		t.Skip("needs root: writes " + lastPid)
	}
	c, _ := countingCache(8)
	defer c.close()
	for range 20 {
		first := startChild(t, "sleep", "60")
		pid := first.Process.Pid
		checkLookup(t, c, pid, "worker")
		stopChild(first)
		if err := os.WriteFile(lastPid, []byte(strconv.Itoa(pid-1)), 0); err != nil {
			t.Skip(err)
		}
		second := startChild(t, "tail", "-f", "/dev/null")
		if second.Process.Pid != pid {
			stopChild(second)
			continue
		}
		exe, cmdline := c.lookup(uint32(pid), "worker", c.mono())
		if !strings.HasSuffix(exe, "/tail") || cmdline != "tail -f /dev/null" {
			t.Fatalf("reused pid %d: lookup = %q, %q, want tail's", pid, exe, cmdline)
		}
		return
	}
	t.Skip("the kernel never gave the pid to the second child (a busy machine)")
}

// An exec renames the process's thread, so the first event under the new
// name gets the new program's details.
func TestProcCacheExec(t *testing.T) {
	c, _ := countingCache(8)
	defer c.close()
	sh := exec.Command("/bin/sh", "-c", "read line; exec sleep 60")
	stdin, err := sh.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopChild(sh) })
	pid := sh.Process.Pid
	if exe, _ := c.lookup(uint32(pid), "sh", c.mono()); strings.HasSuffix(exe, "/sleep") {
		t.Fatalf("before exec: exe %q", exe)
	}
	fmt.Fprintln(stdin)
	waitExe(t, pid, "/sleep")
	exe, cmdline := c.lookup(uint32(pid), "sleep", c.mono())
	if !strings.HasSuffix(exe, "/sleep") || cmdline != "sleep 60" {
		t.Fatalf("after exec: lookup = %q, %q, want sleep's", exe, cmdline)
	}
}

// waitExe waits until /proc/PID/exe ends in suffix and the exec is done:
// exec(2) returns to the parent, and switches the exe, before the command
// line is in place.
func waitExe(t *testing.T, pid int, suffix string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if exe, cmdline := processInfo(uint32(pid)); strings.HasSuffix(exe, suffix) && cmdline != "" {
			return
		}
	}
	t.Fatalf("pid %d never ran *%s", pid, suffix)
}

// An exec that keeps the name is noticed once the details are procMaxAge
// old: the bound documented for what a pidfd and a comm cannot see.
func TestProcCacheRereadsAfterMaxAge(t *testing.T) {
	c, reads := countingCache(8)
	defer c.close()
	clock := time.Unix(1000, 0)
	c.now = func() time.Time { return clock }
	checkLookup(t, c, os.Getpid(), "comm")
	clock = clock.Add(procMaxAge - 1)
	checkLookup(t, c, os.Getpid(), "comm")
	clock = clock.Add(1)
	checkLookup(t, c, os.Getpid(), "comm")
	if *reads != 2 {
		t.Fatalf("%d reads, want 2 (once at first, once after procMaxAge)", *reads)
	}
}

// Details read halfway through an exec (exe but no command line yet) are
// returned but not kept.
func TestProcCacheKeepsNoHalfExec(t *testing.T) {
	c := newProcCache(8, procMaxAge)
	defer c.close()
	reads := 0
	c.read = func(uint32) (string, string) { reads++; return "/usr/bin/curl", "" }
	for range 2 {
		if exe, cmdline := c.lookup(uint32(os.Getpid()), "curl", c.mono()); exe != "/usr/bin/curl" || cmdline != "" {
			t.Fatalf("lookup = %q, %q", exe, cmdline)
		}
	}
	if reads != 2 || len(c.procs) != 0 {
		t.Fatalf("%d reads, %d cached: half an exec was kept", reads, len(c.procs))
	}
}

// Threads named apart read /proc once each, then share the entry.
func TestProcCacheThreadNames(t *testing.T) {
	c, reads := countingCache(8)
	defer c.close()
	for range 3 {
		for _, comm := range []string{"pool-1-thread-1", "pool-1-thread-2", "main"} {
			checkLookup(t, c, os.Getpid(), comm)
		}
	}
	if *reads != 3 {
		t.Fatalf("%d reads for 3 thread names, want 3", *reads)
	}
}

// The cache never holds more than its bound: exited processes go first,
// then live ones.
func TestProcCacheBounded(t *testing.T) {
	c, _ := countingCache(3)
	defer c.close()
	var children []*exec.Cmd
	for i := range 5 {
		child := startChild(t, "sleep", strconv.Itoa(60+i))
		children = append(children, child)
		checkLookup(t, c, child.Process.Pid, "sleep")
		if len(c.procs) > 3 {
			t.Fatalf("%d entries, bound 3", len(c.procs))
		}
	}
	last := children[len(children)-1].Process.Pid
	for _, child := range children[:len(children)-1] {
		stopChild(child)
	}
	checkLookup(t, c, os.Getpid(), "self")
	if _, ok := c.procs[uint32(last)]; !ok || len(c.procs) != 2 {
		t.Fatalf("after the others exited: %d entries (want the last child and self)", len(c.procs))
	}
}

// processInfo reads what the reader read before it used plain system
// calls: os.Readlink, and os.ReadFile cut to MaxCmdline bytes. Checked on
// every process of the machine (skipping ones that change meanwhile) and
// on a long command line with a token in it.
func TestProcessInfoMatchesOSReads(t *testing.T) {
	long := strings.Repeat("x", 300)
	child := startChild(t, "/bin/sh", "-c", "sleep 60", "sh", "-H", "X-aws-ec2-metadata-token: AQAEsecret", long)
	checkSame := func(pid uint32) bool {
		exe, cmdline := processInfo(pid)
		wantExe, wantCmdline := processInfoOS(pid)
		return exe == wantExe && cmdline == wantCmdline
	}
	if !checkSame(uint32(child.Process.Pid)) {
		t.Fatalf("child: %q, want %q", fmt.Sprint(processInfo(uint32(child.Process.Pid))), fmt.Sprint(processInfoOS(uint32(child.Process.Pid))))
	}
	if _, cmdline := processInfo(uint32(child.Process.Pid)); strings.Contains(cmdline, "secret") || len(cmdline) > MaxCmdline+len(" <redacted>") {
		t.Fatalf("child cmdline %q", cmdline)
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		pid, err := strconv.ParseUint(e.Name(), 10, 32)
		if err != nil {
			continue
		}
		if !checkSame(uint32(pid)) && !checkSame(uint32(pid)) {
			t.Errorf("pid %d: %q, want %q", pid, fmt.Sprint(processInfo(uint32(pid))), fmt.Sprint(processInfoOS(uint32(pid))))
		}
	}
}

// processInfoOS is processInfo as it was written with the os package.
func processInfoOS(pid uint32) (exe, cmdline string) {
	dir := "/proc/" + strconv.FormatUint(uint64(pid), 10)
	exe, _ = os.Readlink(dir + "/exe")
	exe = strings.TrimSuffix(exe, " (deleted)")
	data, err := os.ReadFile(dir + "/cmdline")
	if err == nil {
		if len(data) > MaxCmdline {
			data = data[:MaxCmdline]
		}
		args := strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
		cmdline = strings.Join(redactTokens(args), " ")
	}
	return exe, cmdline
}
