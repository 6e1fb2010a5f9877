package main

import (
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/imdsguard/imdsguard/internal/controller"
	"github.com/imdsguard/imdsguard/internal/cri"
	"github.com/imdsguard/imdsguard/internal/policy"
)

const byNamePolicy = "rules:\n  - {name: web, match: {namespace: shop, pod: \"web-*\"}, allowV1: true}\n"

// A policy with rules by name starts without a container runtime, and says
// that its grants by name will not apply; one without says nothing.
func TestOpenRuntimeWarnsWhenRulesByNameHaveNoRuntime(t *testing.T) {
	for _, tc := range []struct {
		name, socket, policy string
		warning              string // a part of the warning, "" for none
		runtime              bool
	}{
		{"none, rules by name", "none", byNamePolicy, controller.NoRuntimeWarning, false},
		{"none, no rules by name", "none", "", "", false},
		{"auto, no socket yet", "auto", byNamePolicy, "no container runtime (CRI) socket is there yet", true},
		{"a socket path (not up yet: rescans ask again)", filepath.Join(t.TempDir(), "cri.sock"), byNamePolicy, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.socket == "auto" && cri.FindSocket() != "" {
				t.Skip("this machine has a CRI socket")
			}
			pol, err := policy.Parse([]byte(tc.policy), "p.yaml")
			if err != nil {
				t.Fatal(err)
			}
			core, logs := observer.New(zapcore.WarnLevel)
			d := &daemon{cfg: &runConfig{criSocket: tc.socket, pol: pol}, log: zap.New(core)}
			d.openRuntime()
			defer d.close()
			if (d.runtime != nil) != tc.runtime {
				t.Errorf("runtime %v, want one: %v", d.runtime, tc.runtime)
			}
			var warned []string
			for _, e := range logs.All() {
				warned = append(warned, e.Message)
			}
			got := strings.Join(warned, "\n")
			if tc.warning == "" && got != "" || !strings.Contains(got, tc.warning) {
				t.Errorf("warnings %q, want one saying %q", got, tc.warning)
			}
		})
	}
}
