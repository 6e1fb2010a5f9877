package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

type capability struct {
	bit  uint
	name string
}

var (
	capNetAdmin  = capability{12, "CAP_NET_ADMIN"}
	capSysPtrace = capability{19, "CAP_SYS_PTRACE"}
	capSysAdmin  = capability{21, "CAP_SYS_ADMIN"}
	capPerfmon   = capability{38, "CAP_PERFMON"}
	capBPF       = capability{39, "CAP_BPF"}
)

// missingCapabilities reads the effective set from /proc/self/status.
// CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON, as on kernels before 5.8.
func missingCapabilities(need []capability) ([]capability, error) {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return nil, fmt.Errorf("reading capabilities: %w", err)
	}
	var eff uint64
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			eff, err = strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return nil, fmt.Errorf("parsing CapEff: %w", err)
			}
		}
	}
	has := func(c capability) bool { return eff&(1<<c.bit) != 0 }
	var missing []capability
	for _, c := range need {
		if has(c) || ((c == capBPF || c == capPerfmon) && has(capSysAdmin)) {
			continue
		}
		missing = append(missing, c)
	}
	return missing, nil
}

func joinCaps(cs []capability) string {
	names := make([]string, len(cs))
	for i, c := range cs {
		names[i] = c.name
	}
	return strings.Join(names, ", ")
}
