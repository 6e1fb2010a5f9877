package main

import (
	"flag"
	"fmt"
	"io"

	"github.com/imdsguard/imdsguard/internal/policy"
)

func checkCommand(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	path := fs.String("policy", "", "policy file to validate (default: the embedded default policy)")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	pol, err := policy.LoadOrDefault(*path, "")
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
	_, err = stdout.Write(out)
	return err
}
