package layout

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/imdsguard/imdsguard/"

// Layers point one way: the kernel side knows nothing of policy files or
// of where events go, and the policy knows nothing of outputs.
func TestLayersPointOneWay(t *testing.T) {
	for pkg, banned := range map[string][]string{
		"internal/loader": {"internal/policy", "internal/events", "internal/ocsf", "internal/sinks", "internal/output", "internal/controller"},
		// the controller hands policy events to a sink it is given
		"internal/controller": {"internal/ocsf", "internal/sinks", "internal/output", "internal/eventreader"},
		"internal/policy":     {"internal/events", "internal/ocsf", "internal/sinks", "internal/output", "internal/loader"},
		// rendering events needs their schema, not the kernel's reader
		"internal/output": {"internal/eventreader", "internal/loader", "internal/policy"},
		"internal/ocsf":   {"internal/eventreader", "internal/loader", "internal/policy"},
		// the pin directory and the counters sit below the loader: what reads
		// only them (metrics, status output) pulls in no loader, policy or output
		"internal/pindir":   {"internal/loader", "internal/policy", "internal/controller", "internal/events", "internal/ocsf", "internal/sinks", "internal/output"},
		"internal/counters": {"internal/loader", "internal/policy", "internal/controller", "internal/events", "internal/ocsf", "internal/sinks", "internal/output"},
		// the nftables layer gets what the policy wants as a plain Want and the
		// pod guard as an interface: no policy, no events, no kernel loader
		// the clouds' facts are a table anyone can read without the daemon
		"internal/cloud":    {"bpf", "internal/policy", "internal/loader", "internal/events", "internal/controller"},
		"internal/nftlayer": {"internal/controller", "internal/policy", "internal/events", "internal/ocsf", "internal/sinks", "internal/output", "internal/loader", "internal/uplink"},
	} {
		deps := moduleDeps(t, pkg)
		for _, b := range banned {
			if slices.Contains(deps, b) {
				t.Errorf("%s depends on %s (its dependencies: %v)", pkg, b, deps)
			}
		}
	}
}

// moduleDeps lists the packages of this module that pkg imports, directly
// or not (tests aside).
func moduleDeps(t *testing.T, pkg string) []string {
	seen := map[string]bool{}
	var visit func(p string)
	visit = func(p string) {
		for _, imp := range imports(t, p) {
			if rel, ok := strings.CutPrefix(imp, module); ok && !seen[rel] {
				seen[rel] = true
				visit(rel)
			}
		}
	}
	visit(pkg)
	var out []string
	for p := range seen {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// imports lists what the non-test files of the package at dir (relative
// to the module root) import.
func imports(t *testing.T, dir string) []string {
	files, err := filepath.Glob(filepath.Join("../..", dir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		af, err := parser.ParseFile(token.NewFileSet(), f, src, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, is := range af.Imports {
			p, _ := strconv.Unquote(is.Path.Value)
			out = append(out, p)
		}
	}
	return out
}
