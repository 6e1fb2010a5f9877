package main

import (
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/imdsguard/imdsguard/internal/cloud"
	"github.com/imdsguard/imdsguard/internal/policy"
)

func checkCommand(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	path := fs.String("policy", "", "policy file to validate (default: the embedded default policy)")
	dmiDir := fs.String("dmi-dir", cloud.DMIDir, "directory of the firmware's DMI strings, from which cloud: auto detects the cloud")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	det, err := cloud.Detect(*dmiDir)
	if err != nil {
		return fmt.Errorf("detecting the cloud: %w", err)
	}
	pol, err := policy.LoadOrDefault(*path, "", det.Cloud)
	if err != nil {
		return err
	}
	// What the kernel cannot hold is an error too (cgroup-specific limits
	// are checked against the live cgroup tree when the daemon loads it).
	compiled, err := pol.Compile()
	if err != nil {
		return err
	}
	if _, err := compiled.DefaultCandidates(); err != nil {
		return fmt.Errorf("%s: rules: %w", *path, err)
	}
	out, err := pol.YAML()
	if err != nil {
		return fmt.Errorf("rendering policy: %w", err)
	}
	if _, err := io.WriteString(stdout, profileComment(pol, det)); err != nil {
		return err
	}
	_, err = stdout.Write(out)
	return err
}

// profileComment describes the resolved profile as YAML comments, so that
// check's output still parses as the policy it prints.
func profileComment(pol *policy.Policy, det cloud.Detection) string {
	var b strings.Builder
	prof := pol.Profile
	fmt.Fprintf(&b, "# cloud profile: %s (%s)\n", prof.Name, cloudWhy(pol, det))
	if pr := prof.Proof; pr != nil {
		value := "any value"
		if pr.Value != "" {
			value = fmt.Sprintf("%q", pr.Value)
		}
		fmt.Fprintf(&b, "#   proof: header %s with %s (required: %v)\n", pr.Header, value, *pol.RequireToken)
		if pr.TokenPath != "" {
			ttl := pr.MaxTTL
			if pol.MaxTokenTTL != 0 {
				ttl = pol.MaxTokenTTL
			}
			fmt.Fprintf(&b, "#   tokens: PUT %s with %s, at most %d s\n", pr.TokenPath, pr.TTLHeader, ttl)
		}
	} else {
		b.WriteString("#   proof: none (pods refused, credential reads logged)\n")
	}
	if len(prof.LegacyPaths) > 0 {
		fmt.Fprintf(&b, "#   legacy paths refused without the proof: %s\n", strings.Join(prof.LegacyPaths, ", "))
	}
	return b.String()
}
