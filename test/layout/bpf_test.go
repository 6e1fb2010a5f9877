package layout

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/imdsguard/imdsguard/bpf"
)

// maxCFuncLines is the longest a function of the BPF C sources may be.
const maxCFuncLines = 120

// The judge's test object must not carry the daemon's maps: what it tests
// is the judge alone, and a judge that reached for a daemon map would be
// caught here rather than by a verifier failure on some kernel.
func TestJudgeTestObjectCarriesNoDaemonMap(t *testing.T) {
	daemon, err := bpf.LoadImdsguard()
	if err != nil {
		t.Fatal(err)
	}
	judge, err := bpf.LoadJudgeTest()
	if err != nil {
		t.Fatal(err)
	}
	for name := range judge.Maps {
		if strings.HasPrefix(name, ".") {
			continue // the object's own data sections (.rodata, .bss)
		}
		if _, ok := daemon.Maps[name]; ok {
			t.Errorf("the judge test object carries the daemon's map %q", name)
		}
	}
	if len(judge.Maps) == 0 {
		t.Fatal("the judge test object has no maps at all: the spec did not load")
	}
}

var includeLine = regexp.MustCompile(`^#include\s+"([^"]+)"`)

// The HTTP judge's headers include only abi.h and each other, so the judge
// compiles (and is tested) without the daemon's maps or hooks.
func TestJudgeHeadersIncludeOnlyTheABI(t *testing.T) {
	files, err := filepath.Glob("../../bpf/http/*.h")
	if err != nil || len(files) == 0 {
		t.Fatalf("no judge headers found in bpf/http: %v", err)
	}
	for _, f := range files {
		for _, inc := range includes(t, f) {
			if inc == "../abi.h" {
				continue
			}
			if strings.Contains(inc, "/") {
				t.Errorf("%s includes %q: the judge may include only ../abi.h and its own headers", f, inc)
				continue
			}
			if _, err := os.Stat(filepath.Join(filepath.Dir(f), inc)); err != nil {
				t.Errorf("%s includes %q, which is not a judge header", f, inc)
			}
		}
	}
}

func includes(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		if m := includeLine.FindStringSubmatch(line); m != nil {
			out = append(out, m[1])
		}
	}
	return out
}

func TestNoCFunctionIsLongerThanTheLimit(t *testing.T) {
	var files []string
	for _, pattern := range []string{"../../bpf/*.c", "../../bpf/*.h", "../../bpf/http/*.h"} {
		m, err := filepath.Glob(pattern)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, m...)
	}
	if len(files) == 0 {
		t.Fatal("no BPF C sources found")
	}
	for _, f := range files {
		for name, n := range cFuncLengths(t, f) {
			if n > maxCFuncLines {
				t.Errorf("%s: %s is %d lines, more than %d: split it", f, name, n, maxCFuncLines)
			}
		}
	}
}

// cFuncLengths maps each function of a C file to its length in lines, from
// its signature's first line to its closing brace. The sources keep the
// kernel's style: a function's braces stand alone in column 0, which
// nothing else's do.
func cFuncLengths(t *testing.T, path string) map[string]int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]int{}
	var sig []string // the lines since the last blank line or closing brace
	name, start, line := "", 0, 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line++
		text := sc.Text()
		switch {
		case text == "{" && name == "":
			name, start = signatureName(sig), line-len(sig)
		case text == "}" && name != "":
			out[name] = line - start + 1
			name, sig = "", nil
		case name == "" && (text == "" || strings.HasPrefix(text, "}") || strings.HasPrefix(text, "/*") || strings.HasPrefix(text, " *")):
			sig = nil
		case name == "":
			sig = append(sig, text)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

var funcName = regexp.MustCompile(`(\w+)\s*\(`)

func signatureName(sig []string) string {
	joined := strings.Join(sig, " ")
	for _, m := range funcName.FindAllStringSubmatch(joined, -1) {
		switch m[1] {
		case "__attribute__", "noinline", "SEC":
			continue
		}
		return m[1]
	}
	return joined
}
